#!/usr/bin/env python3
"""Writes scripts/data/cascade_qa.jsonl: short factual questions with their keys, for
``scripts/bench_cascade.py`` (how well a confidence measure tells a right local answer from
a wrong one).

Deterministic (no randomness outside a fixed seed), from facts this file states or computes:
sums and products, number words, the order of days and months (computed); capitals,
continents, chemical symbols, opposites, plurals (tables below). Each item is

    {"id", "category", "question", "prompt", "answer", "aliases"}

``prompt`` is what a device sends to the demo model (Gemma 3 270M, a base model, so a
completion): two worked examples of the same category, then the question, ``Q: …\\nA:``.
``aliases`` are the other spellings accepted; ``answer`` is the stand-in upstream's reply.

    .venv/bin/python scripts/make_cascade_qa.py            # rewrites the data file
    .venv/bin/python scripts/make_cascade_qa.py --check    # fails if it is out of date
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "cascade_qa.jsonl"
SEED = 18

# country: (capital, other accepted spellings)
CAPITALS: dict[str, tuple[str, ...]] = {
    "France": ("Paris",), "Germany": ("Berlin",), "Italy": ("Rome",), "Spain": ("Madrid",),
    "Portugal": ("Lisbon",), "Japan": ("Tokyo",), "China": ("Beijing", "Peking"),
    "India": ("New Delhi",), "Russia": ("Moscow",), "Egypt": ("Cairo",),
    "Canada": ("Ottawa",), "Mexico": ("Mexico City",), "Australia": ("Canberra",),
    "New Zealand": ("Wellington",), "Norway": ("Oslo",), "Sweden": ("Stockholm",),
    "Finland": ("Helsinki",), "Denmark": ("Copenhagen",), "Poland": ("Warsaw",),
    "Austria": ("Vienna",), "Hungary": ("Budapest",), "Greece": ("Athens",),
    "Turkey": ("Ankara",), "Ireland": ("Dublin",), "Belgium": ("Brussels",),
    "the Netherlands": ("Amsterdam",), "Switzerland": ("Bern", "Berne"),
    "the Czech Republic": ("Prague",), "Romania": ("Bucharest",), "Bulgaria": ("Sofia",),
    "Serbia": ("Belgrade",), "Croatia": ("Zagreb",), "Ukraine": ("Kyiv", "Kiev"),
    "Iran": ("Tehran", "Teheran"), "Iraq": ("Baghdad",), "Saudi Arabia": ("Riyadh",),
    "Thailand": ("Bangkok",), "Vietnam": ("Hanoi",), "the Philippines": ("Manila",),
    "South Korea": ("Seoul",), "Pakistan": ("Islamabad",), "Bangladesh": ("Dhaka",),
    "Nepal": ("Kathmandu",), "Morocco": ("Rabat",), "Nigeria": ("Abuja",),
    "Ghana": ("Accra",), "Ethiopia": ("Addis Ababa",), "Colombia": ("Bogotá", "Bogota"),
    "Venezuela": ("Caracas",), "Cuba": ("Havana",), "Iceland": ("Reykjavík", "Reykjavik"),
    "Afghanistan": ("Kabul",), "Mongolia": ("Ulaanbaatar", "Ulan Bator"),
    "Syria": ("Damascus",), "Lebanon": ("Beirut",), "Jordan": ("Amman",),
    "Uruguay": ("Montevideo",), "Paraguay": ("Asunción", "Asuncion"), "Ecuador": ("Quito",),
    "Libya": ("Tripoli",), "Tunisia": ("Tunis",), "Algeria": ("Algiers",),
    "Sudan": ("Khartoum",), "Uganda": ("Kampala",), "Zimbabwe": ("Harare",),
    "Zambia": ("Lusaka",), "Angola": ("Luanda",), "Senegal": ("Dakar",),
    "Malaysia": ("Kuala Lumpur",), "Cambodia": ("Phnom Penh",), "Laos": ("Vientiane",),
    "Qatar": ("Doha",), "Oman": ("Muscat",), "Latvia": ("Riga",), "Lithuania": ("Vilnius",),
    "Estonia": ("Tallinn",), "Slovakia": ("Bratislava",), "Slovenia": ("Ljubljana",),
    "Belarus": ("Minsk",), "Georgia": ("Tbilisi",), "Armenia": ("Yerevan",),
    "Azerbaijan": ("Baku",), "Uzbekistan": ("Tashkent",), "Jamaica": ("Kingston",),
    "Honduras": ("Tegucigalpa",), "Nicaragua": ("Managua",), "Albania": ("Tirana",),
    "North Macedonia": ("Skopje",), "Montenegro": ("Podgorica",), "Malta": ("Valletta",),
    "Cyprus": ("Nicosia",), "Fiji": ("Suva",), "Madagascar": ("Antananarivo",),
    "Mali": ("Bamako",), "Niger": ("Niamey",), "Somalia": ("Mogadishu",),
    "Rwanda": ("Kigali",), "Namibia": ("Windhoek",), "Botswana": ("Gaborone",),
    "Mozambique": ("Maputo",), "Malawi": ("Lilongwe",), "North Korea": ("Pyongyang",),
}  # fmt: skip

CONTINENTS: dict[str, str] = {
    "Kenya": "Africa", "Nigeria": "Africa", "Ghana": "Africa", "Morocco": "Africa",
    "Ethiopia": "Africa", "Angola": "Africa", "Senegal": "Africa", "Zambia": "Africa",
    "Japan": "Asia", "India": "Asia", "Thailand": "Asia", "Vietnam": "Asia", "Nepal": "Asia",
    "Mongolia": "Asia", "Pakistan": "Asia", "Cambodia": "Asia",
    "France": "Europe", "Germany": "Europe", "Poland": "Europe", "Norway": "Europe",
    "Portugal": "Europe", "Hungary": "Europe", "Ireland": "Europe", "Finland": "Europe",
    "Canada": "North America", "Mexico": "North America", "Cuba": "North America",
    "Jamaica": "North America", "the United States": "North America",
    "Brazil": "South America", "Peru": "South America", "Chile": "South America",
    "Argentina": "South America", "Colombia": "South America", "Uruguay": "South America",
    "Bolivia": "South America",
    "Australia": "Oceania", "New Zealand": "Oceania", "Fiji": "Oceania",
    "Papua New Guinea": "Oceania",
}  # fmt: skip
CONTINENT_ALIASES = {"Oceania": ("Australia", "Australia and Oceania")}

ELEMENTS: dict[str, str] = {
    "hydrogen": "H", "helium": "He", "lithium": "Li", "beryllium": "Be", "boron": "B",
    "carbon": "C", "nitrogen": "N", "fluorine": "F", "neon": "Ne", "sodium": "Na",
    "magnesium": "Mg", "aluminium": "Al", "silicon": "Si", "phosphorus": "P", "sulfur": "S",
    "chlorine": "Cl", "argon": "Ar", "potassium": "K", "calcium": "Ca", "titanium": "Ti",
    "chromium": "Cr", "manganese": "Mn", "iron": "Fe", "cobalt": "Co", "nickel": "Ni",
    "copper": "Cu", "zinc": "Zn", "arsenic": "As", "bromine": "Br", "krypton": "Kr",
    "silver": "Ag", "tin": "Sn", "iodine": "I", "xenon": "Xe", "barium": "Ba",
    "tungsten": "W", "platinum": "Pt", "gold": "Au", "mercury": "Hg", "lead": "Pb",
    "uranium": "U", "radon": "Rn", "radium": "Ra",
}  # fmt: skip

# word: (opposite, other accepted opposites)
OPPOSITES: dict[str, tuple[str, ...]] = {
    "hot": ("cold",), "big": ("small", "little"), "up": ("down",), "left": ("right",),
    "happy": ("sad", "unhappy"), "fast": ("slow",), "open": ("closed", "close", "shut"),
    "early": ("late",), "wet": ("dry",), "high": ("low",), "rich": ("poor",),
    "full": ("empty",), "thick": ("thin",), "strong": ("weak",), "long": ("short",),
    "win": ("lose",), "buy": ("sell",), "push": ("pull",), "north": ("south",),
    "east": ("west",), "day": ("night",), "black": ("white",), "true": ("false",),
    "first": ("last",), "inside": ("outside",), "alive": ("dead",), "love": ("hate",),
    "always": ("never",), "before": ("after",), "clean": ("dirty",),
    "cheap": ("expensive", "dear"), "loud": ("quiet", "soft", "silent"),
    "begin": ("end", "finish"), "question": ("answer",), "friend": ("enemy", "foe"),
    "heavy": ("light",), "deep": ("shallow",), "wide": ("narrow",),
    "sharp": ("blunt", "dull"), "asleep": ("awake",),
}  # fmt: skip

# singular: (plural, other accepted plurals)
PLURALS: dict[str, tuple[str, ...]] = {
    "child": ("children",), "mouse": ("mice",), "goose": ("geese",), "foot": ("feet",),
    "tooth": ("teeth",), "man": ("men",), "woman": ("women",), "person": ("people", "persons"),
    "ox": ("oxen",), "cactus": ("cacti", "cactuses"), "fungus": ("fungi", "funguses"),
    "analysis": ("analyses",), "crisis": ("crises",), "phenomenon": ("phenomena",),
    "criterion": ("criteria",), "leaf": ("leaves",), "knife": ("knives",),
    "wolf": ("wolves",), "life": ("lives",), "half": ("halves",), "sheep": ("sheep",),
    "deer": ("deer",), "box": ("boxes",), "city": ("cities",), "baby": ("babies",),
    "bus": ("buses", "busses"), "potato": ("potatoes",), "tomato": ("tomatoes",),
    "hero": ("heroes",), "church": ("churches",), "dish": ("dishes",), "wife": ("wives",),
    "loaf": ("loaves",), "louse": ("lice",), "die": ("dice",), "thief": ("thieves",),
    "shelf": ("shelves",), "glass": ("glasses",),
}  # fmt: skip

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]  # fmt: skip
ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
]  # fmt: skip
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

# How a question is put to the model, by turns: "qa", two worked examples of the category and
# then "Q: <question>\nA:" (the model answers and goes on with the next question of the
# pattern); "statement", the start of a sentence the answer completes, with nothing before it
# ("The capital of France is"; the model goes on with whatever it makes of the sentence).
STYLES = ("qa", "statement")

# two worked examples per category, never asked themselves
SHOTS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "capital": (
        ("What is the capital of Peru?", "Lima"), ("What is the capital of Kenya?", "Nairobi"),
    ),
    "continent": (
        ("On which continent is Egypt?", "Africa"), ("On which continent is Spain?", "Europe"),
    ),
    "element": (
        ("What is the chemical symbol for oxygen?", "O"),
        ("What is the chemical symbol for lithium?", "Li"),
    ),
    "opposite": (
        ("What is the opposite of good?", "bad"), ("What is the opposite of young?", "old"),
    ),
    "plural": (("What is the plural of cat?", "cats"), ("What is the plural of calf?", "calves")),
    "addition": (("What is 12 + 7?", "19"), ("What is 31 + 45?", "76")),
    "product": (("What is 3 times 4?", "12"), ("What is 6 times 7?", "42")),
    "number_word": (
        ("How is 21 written in words?", "twenty-one"), ("How is 8 written in words?", "eight"),
    ),
    "order": (
        ("Which day comes after Sunday?", "Monday"), ("Which month comes before April?", "March"),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Item:
    id: str
    category: str
    style: str  # "qa" or "statement" (see STYLES)
    question: str
    prompt: str
    answer: str
    aliases: tuple[str, ...] = field(default=())


def number_words(n: int) -> str:
    """English words for 0 <= n < 100, hyphenated as usual ("forty-two")."""
    if not 0 <= n < 100:
        raise ValueError(f"{n} is out of range")
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] if ones == 0 else f"{TENS[tens]}-{ONES[ones]}"


def prompt_for(category: str, question: str) -> str:
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in SHOTS[category])
    return f"{shots}Q: {question}\nA:"


def _questions() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(category, question, statement, answers): the statement is the question as the start of
    a sentence the answer completes; the first answer is the key, the rest aliases."""
    rng = random.Random(SEED)
    out: list[tuple[str, str, str, tuple[str, ...]]] = []
    for country, names in CAPITALS.items():
        out.append(
            ("capital", f"What is the capital of {country}?", f"The capital of {country} is", names)
        )
    for country, continent in CONTINENTS.items():
        names = (continent, *CONTINENT_ALIASES.get(continent, ()))
        out.append(
            (
                "continent", f"On which continent is {country}?",
                f"{country[0].upper()}{country[1:]} is on the continent of", names,
            )
        )  # fmt: skip
    for element, symbol in ELEMENTS.items():
        out.append(
            (
                "element", f"What is the chemical symbol for {element}?",
                f"The chemical symbol for {element} is", (symbol,),
            )
        )  # fmt: skip
    for word, opposites in OPPOSITES.items():
        stem = f'The opposite of "{word}" is'
        out.append(("opposite", f"What is the opposite of {word}?", stem, opposites))
    for word, plurals in PLURALS.items():
        stem = f'The plural of "{word}" is'
        out.append(("plural", f"What is the plural of {word}?", stem, plurals))
    sums = sorted({(rng.randint(2, 60), rng.randint(2, 60)) for _ in range(45)})[:40]
    for a, b in sums:
        out.append(("addition", f"What is {a} + {b}?", f"{a} + {b} =", (str(a + b),)))
    products = sorted({(rng.randint(2, 12), rng.randint(2, 12)) for _ in range(40)})[:30]
    for a, b in products:
        out.append(("product", f"What is {a} times {b}?", f"{a} times {b} is", (str(a * b),)))
    for n in sorted(rng.sample(range(1, 100), 30)):
        words = number_words(n)
        aliases = (words, words.replace("-", " ")) if "-" in words else (words,)
        stem = f"The number {n} written in words is"
        out.append(("number_word", f"How is {n} written in words?", stem, aliases))
    for names, unit in ((DAYS, "day"), (MONTHS, "month")):
        for i, name in enumerate(names):
            after, before = names[(i + 1) % len(names)], names[i - 1]
            out.append(
                (
                    "order",
                    f"Which {unit} comes after {name}?",
                    f"The {unit} after {name} is",
                    (after,),
                )
            )
            out.append(
                (
                    "order",
                    f"Which {unit} comes before {name}?",
                    f"The {unit} before {name} is",
                    (before,),
                )
            )
    return out


def build() -> list[Item]:
    """Every question once; within a category the styles take turns (see STYLES)."""
    items = []
    asked = {q for shots in SHOTS.values() for q, _ in shots}
    counts: dict[str, int] = {}
    for category, question, statement, answers in _questions():
        if question in asked:
            continue
        counts[category] = counts.get(category, 0) + 1
        style = STYLES[counts[category] % len(STYLES)]
        items.append(
            Item(
                id=f"{category}-{counts[category]:03d}",
                category=category,
                style=style,
                question=question,
                prompt=prompt_for(category, question) if style == "qa" else statement,
                answer=answers[0],
                aliases=answers[1:],
            )
        )
    return items


def render(items: list[Item]) -> str:
    return "".join(json.dumps(asdict(i), ensure_ascii=False) + "\n" for i in items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run scripts/make_cascade_qa.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {text.count(chr(10))} items to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
