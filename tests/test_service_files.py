"""The files that run the appliance on a box: systemd units, the udev rule, the USB helper.

The units are read with a small parser of systemd's syntax and checked for what the service
relies on (user, home, restart policy, sandboxing); `systemd-analyze verify` also checks them
where that binary exists. The USB import helper is run for real against a folder standing in
for a mounted stick (`--from-dir`), and, where this machine allows loop devices, against an
ext4 image through its mount path.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.bundles.inbox import scan_once
from appliance.bundles.installer import BundleManager
from appliance.home import SYSTEM_HOME
from tests.helpers import Key, make_bundle

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
UNIT = SCRIPTS / "appliance.service"
TEMPLATE = SCRIPTS / "appliance-usb-import@.service"
RULE = SCRIPTS / "99-appliance-usb.rules"
HELPER = SCRIPTS / "appliance-usb-import"
OPERATIONS = REPO / "docs" / "operations.md"
HELPER_INSTALLED = "/usr/local/libexec/appliance-usb-import"
SAFE_NAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*\.bundle$")

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """systemd's unit syntax: [Section], Key=Value, comments; a key may repeat."""
    unit: Unit = {}
    section: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not used here"
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            section = header.group(1)
            assert section not in unit, f"line {number}: section [{section}] twice"
            unit[section] = {}
            continue
        assert section is not None, f"line {number}: a setting before any [Section]"
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), f"line {number}: {raw}"
        unit[section].setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times, wanted once"
    return values[0]


@pytest.fixture(scope="module")
def service() -> Unit:
    return parse_unit(UNIT.read_text())


@pytest.fixture(scope="module")
def template() -> Unit:
    return parse_unit(TEMPLATE.read_text())


# --- appliance.service -------------------------------------------------------------------


def test_service_runs_appliance_serve_as_its_own_user(service: Unit):
    assert set(service) == {"Unit", "Service", "Install"}
    argv = shlex.split(one(service, "Service", "ExecStart"))
    assert Path(argv[0]).is_absolute() and Path(argv[0]).name == "appliance"
    assert argv[1:] == ["serve"]
    assert one(service, "Service", "User") == "appliance"
    assert one(service, "Service", "Type") == "simple"  # the daemon has no sd_notify
    assert one(service, "Install", "WantedBy") == "multi-user.target"


def test_service_home_is_the_state_directory(service: Unit):
    home = str(SYSTEM_HOME)  # what the CLI uses as root, so both read the same state
    assert f"APPLIANCE_HOME={home}" in service["Service"]["Environment"]
    assert one(service, "Service", "StateDirectory") == Path(home).name == "appliance"
    assert home.startswith("/var/lib/")
    assert one(service, "Service", "StateDirectoryMode") == "0700"
    assert home in one(service, "Service", "ReadWritePaths").split()


def test_service_restarts_on_failure_within_a_start_limit(service: Unit):
    assert one(service, "Service", "Restart") == "on-failure"
    assert float(one(service, "Service", "RestartSec")) > 0
    assert int(one(service, "Unit", "StartLimitBurst")) >= 1
    assert int(one(service, "Unit", "StartLimitIntervalSec")) > 0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
    ],
)
def test_service_is_sandboxed(service: Unit, key: str, value: str):
    assert one(service, "Service", key) == value


def test_service_sockets_and_limits(service: Unit):
    families = one(service, "Service", "RestrictAddressFamilies").split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert int(one(service, "Service", "LimitNOFILE")) >= 4096
    # Off on purpose (some BLAS/onnxruntime/CUDA builds need W+X memory); the file says why.
    assert "MemoryDenyWriteExecute" not in service["Service"]
    assert "#MemoryDenyWriteExecute=yes" in UNIT.read_text()


# --- the USB import: udev rule and template unit -----------------------------------------


def rule_lines() -> list[str]:
    return [
        line.strip()
        for line in RULE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_udev_rule_starts_the_template_unit_on_add():
    (line,) = rule_lines()
    token = re.compile(r'([A-Z_]+(?:\{[A-Za-z0-9_]+\})?)(==|!=|\+=|:=|=)"([^"]*)"')
    parts = [p.strip() for p in line.split(",")]
    matches = [token.fullmatch(p) for p in parts]
    assert all(matches), f"not a udev key: {parts[matches.index(None)]}"
    rule = [m.groups() for m in matches if m]
    assert ("ACTION", "==", "add") in rule
    assert ("SUBSYSTEM", "==", "block") in rule
    assert ("ENV{ID_BUS}", "==", "usb") in rule
    assert ("ENV{ID_FS_USAGE}", "==", "filesystem") in rule
    wants = [value for key, op, value in rule if key == "ENV{SYSTEMD_WANTS}" and op in "+="]
    assert wants == ["appliance-usb-import@%k.service"]
    assert wants[0].replace("%k", "") == TEMPLATE.name
    # udev itself runs nothing: no RUN/PROGRAM/IMPORT{program} (they are killed after seconds).
    assert not [key for key, _, _ in rule if key.startswith(("RUN", "PROGRAM", "IMPORT"))]


def test_template_unit_runs_the_helper_once_per_partition(template: Unit):
    assert one(template, "Service", "Type") == "oneshot"
    assert shlex.split(one(template, "Service", "ExecStart")) == [HELPER_INSTALLED, "%I"]
    assert one(template, "Unit", "BindsTo") == "dev-%i.device"
    assert f"APPLIANCE_HOME={SYSTEM_HOME}" in template["Service"]["Environment"]
    assert one(template, "Service", "ReadWritePaths") == f"{SYSTEM_HOME}/inbox"
    for key in ("PrivateMounts", "PrivateTmp", "PrivateNetwork", "NoNewPrivileges"):
        assert one(template, "Service", key) == "yes"
    assert one(template, "Service", "ProtectSystem") == "strict"
    # Each of these turns on systemd's device allow-list, and the mount of /dev/%I then fails
    # with "permission denied" (ProtectClock= implies DeviceAllow=char-rtc).
    blocking = {"PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"}
    assert not blocking & set(template["Service"])


# --- systemd-analyze verify, where systemd is installed ----------------------------------


def _analyze(unit_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    done = subprocess.run(
        [tool, "verify", str(unit_path)], capture_output=True, text=True, timeout=60
    )
    ours = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if str(unit_path.parent) in line or unit_path.name.split("@")[0] in line
    ]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def _executable() -> str:
    venv_cli = Path(sys.executable).with_name("appliance")
    return str(venv_cli) if venv_cli.exists() else str(shutil.which("true"))


def test_systemd_analyze_verifies_the_service(tmp_path: Path):
    # verify insists that ExecStart exists: point it at this machine's appliance CLI.
    text = UNIT.read_text().replace("/opt/appliance/bin/appliance", _executable())
    (tmp_path / "appliance.service").write_text(text)
    _analyze(tmp_path / "appliance.service")


def test_systemd_analyze_verifies_the_gpu_drop_in_from_the_docs(tmp_path: Path):
    blocks = re.findall(r"```ini\n(.*?)```", OPERATIONS.read_text(), re.S)
    assert len(blocks) == 1 and "DeviceAllow=/dev/nvidiactl rw" in blocks[0]
    text = UNIT.read_text().replace("/opt/appliance/bin/appliance", _executable())
    (tmp_path / "appliance.service").write_text(text)
    (tmp_path / "appliance.service.d").mkdir()
    (tmp_path / "appliance.service.d" / "gpu.conf").write_text(blocks[0])
    _analyze(tmp_path / "appliance.service")


def test_systemd_analyze_verifies_the_template_instance(tmp_path: Path):
    text = TEMPLATE.read_text().replace(HELPER_INSTALLED, str(HELPER))
    (tmp_path / TEMPLATE.name).write_text(text)
    _analyze(tmp_path / "appliance-usb-import@sdb1.service")


# --- the helper script -------------------------------------------------------------------


def test_helper_is_an_executable_bash_script_that_parses():
    assert HELPER.read_text().startswith("#!/bin/bash\n")
    assert HELPER.stat().st_mode & stat.S_IXUSR
    subprocess.run(["bash", "-n", str(HELPER)], check=True, timeout=30)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        done = subprocess.run([shellcheck, str(HELPER)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout


def helper_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_USB_")}
    env.pop("INVOCATION_ID", None)  # not under systemd: log lines go to stderr
    env["APPLIANCE_USB_SYSLOG"] = "0"  # and not into this machine's journal
    return {**env, **extra}


def run_helper(*args: str | Path | int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELPER), *map(str, args)],
        capture_output=True,
        text=True,
        errors="replace",
        env=helper_env(**env),
        timeout=120,
    )


def everything_in(folder: Path) -> dict[str, bytes]:
    """Every entry of a folder, hidden ones included; only regular files expected."""
    found = {}
    for entry in folder.iterdir():
        assert entry.is_file() and not entry.is_symlink(), entry
        found[entry.name] = entry.read_bytes()
    return found


CAP = 1000  # --max-bytes in these tests


@pytest.fixture
def stick(tmp_path: Path) -> Path:
    """A folder laid out like a mounted USB stick, with every case the helper must handle."""
    root = tmp_path / "stick"
    (root / "appliance" / "deeper").mkdir(parents=True)
    (root / "other").mkdir()
    files = {
        "a.bundle": b"top level",
        "with space\nand newline.bundle": b"odd name",
        "$(touch PWNED).bundle": b"no command substitution",
        "-rf.bundle": b"leading dash",
        os.fsdecode(b"caf\xe9\x1b[31m.bundle"): b"not UTF-8, escape code",
        "exactly-the-cap.bundle": b"x" * CAP,
        "appliance/c.bundle": b"in appliance/",
        # not copied:
        ".hidden.bundle": b"hidden",
        "notes.txt": b"other extension",
        "a.bundle.txt": b"other extension",
        "big.bundle": b"y" * (CAP + 1),
        "other/d.bundle": b"another folder",
        "appliance/deeper/e.bundle": b"nested below appliance/",
    }
    for name, content in files.items():
        (root / name).write_bytes(content)
    (root / "link.bundle").symlink_to("a.bundle")
    (root / "passwd.bundle").symlink_to("/etc/passwd")
    (root / "appliance" / "link.bundle").symlink_to("../a.bundle")
    (root / "dir.bundle").mkdir()
    os.mkfifo(root / "fifo.bundle")
    return root


COPIED = {
    b"top level": "a.bundle",
    b"odd name": "with_space_and_newline.bundle",
    b"no command substitution": "__touch_PWNED_.bundle",
    b"leading dash": "-rf.bundle",
    b"not UTF-8, escape code": "caf___31m.bundle",
    b"x" * CAP: "exactly-the-cap.bundle",
    b"in appliance/": "c.bundle",
}


def test_helper_copies_only_plain_bundles_from_the_top_level_and_appliance(
    stick: Path, tmp_path: Path
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    done = run_helper("--from-dir", stick, "--inbox", inbox, "--max-bytes", CAP)

    assert done.returncode == 0, done.stderr
    copied = everything_in(inbox)  # no temporary (hidden) file is left behind
    assert {content: name for name, content in copied.items()} == COPIED
    for name in copied:
        assert SAFE_NAME.fullmatch(name), name
        assert stat.S_IMODE((inbox / name).stat().st_mode) == 0o640
    log = done.stderr
    for skipped, why in [
        ("link.bundle", "a symbolic link"),
        ("passwd.bundle", "a symbolic link"),
        ("appliance/link.bundle", "a symbolic link"),
        ("big.bundle", f"{CAP + 1} bytes, over the limit of {CAP}"),
        ("dir.bundle", "not a regular file"),
        ("fifo.bundle", "not a regular file"),
    ]:
        assert f"skipped {skipped}: {why}" in log
    assert "copied $'with space\\nand newline.bundle'" in log  # one line per file in the log
    assert "\x1b" not in log
    assert "7 copied, 6 skipped, 0 failed" in log
    assert not list(tmp_path.rglob("PWNED")) and not (Path.cwd() / "PWNED").exists()
    assert (stick / "a.bundle").read_bytes() == b"top level"  # the source is left as it was


def test_helper_does_not_follow_a_symlinked_appliance_folder(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.bundle").write_bytes(b"behind a link")
    root = tmp_path / "stick"
    root.mkdir()
    (root / "appliance").symlink_to(elsewhere)
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    done = run_helper("--from-dir", root, "--inbox", inbox)

    assert done.returncode == 0, done.stderr
    assert everything_in(inbox) == {}
    assert "skipped appliance: a symbolic link" in done.stderr


def test_helper_never_overwrites_and_never_copies_the_same_file_twice(tmp_path: Path):
    root = tmp_path / "stick"
    root.mkdir()
    (root / "m.bundle").write_bytes(b"first")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    assert run_helper("--from-dir", root, "--inbox", inbox).returncode == 0

    again = run_helper("--from-dir", root, "--inbox", inbox)  # plugged in twice
    assert again.returncode == 0
    assert "already waits in the inbox as m.bundle" in again.stderr
    (root / "m.bundle").write_bytes(b"another file, same name")
    assert run_helper("--from-dir", root, "--inbox", inbox).returncode == 0

    assert everything_in(inbox) == {
        "m.bundle": b"first",
        "m-1.bundle": b"another file, same name",
    }


def test_helper_copies_at_most_max_files(tmp_path: Path):
    root = tmp_path / "stick"
    root.mkdir()
    for n in range(3):
        (root / f"b{n}.bundle").write_bytes(b"%d" % n)
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    done = run_helper("--from-dir", root, "--inbox", inbox, "--max-files", "2")

    assert done.returncode == 0
    assert sorted(everything_in(inbox)) == ["b0.bundle", "b1.bundle"]
    assert "skipped b2.bundle: already copied 2 bundles" in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_helper_gives_the_copies_to_the_owner(tmp_path: Path):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")
    root = tmp_path / "stick"
    root.mkdir()
    (root / "m.bundle").write_bytes(b"bundle")
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    done = run_helper("--from-dir", root, "--inbox", inbox, "--owner", "nobody")

    assert done.returncode == 0, done.stderr
    st = (inbox / "m.bundle").stat()
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_helper_refuses_bad_usage(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    me = pwd.getpwuid(os.getuid()).pw_name
    cases = [
        ((), "usage:"),
        (("--inbox", inbox, "--owner", me, "sdb1", "--from-dir", tmp_path), "usage:"),
        (("--from-dir", tmp_path, "--inbox", tmp_path / "missing"), "no inbox folder"),
        (("--from-dir", tmp_path, "--inbox", inbox, "--max-bytes", "1e9"), "--max-bytes"),
        (("--from-dir", tmp_path, "--inbox", inbox, "--owner", "no-such-user-x"), "no user"),
        (("--inbox", inbox, "--owner", me, "../sda"), "refused device name"),
        (("--inbox", inbox, "--owner", me, "no-such-disk9"), "is not a block device"),
    ]
    for args, message in cases:
        done = run_helper(*args)
        assert (done.returncode, message in done.stderr) == (2, True), (args, done.stderr)
    assert everything_in(inbox) == {}


def test_helper_leaves_no_partial_file_when_stopped_mid_copy(tmp_path: Path):
    root = tmp_path / "stick"
    root.mkdir()
    with open(root / "huge.bundle", "wb") as f:
        f.truncate(4 * 1024**3)  # sparse: costs no disk on the stick side
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    helper = subprocess.Popen(
        [str(HELPER), "--from-dir", str(root), "--inbox", str(inbox)],
        env=helper_env(),
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as systemd's cgroup for the unit
    )
    try:
        deadline = time.monotonic() + 30
        while not list(inbox.glob(".usb-import.*")) and helper.poll() is None:
            assert time.monotonic() < deadline, "the copy never started"
            time.sleep(0.005)
        if helper.poll() is not None:
            pytest.skip("the copy finished before it could be stopped")
        os.killpg(helper.pid, signal.SIGTERM)  # what systemd does when the stick is pulled
        assert helper.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if helper.poll() is None:
            os.killpg(helper.pid, signal.SIGKILL)
            helper.wait()
    assert everything_in(inbox) == {}


def test_a_copied_bundle_is_installed_by_the_daemons_inbox_scan(
    manager: BundleManager, workdir: Path, key: Key, tmp_path: Path
):
    root = tmp_path / "stick"
    (root / "appliance").mkdir(parents=True)
    shutil.copyfile(make_bundle(workdir, [key]), root / "appliance" / "Demo (v1)\n.bundle")

    done = run_helper("--from-dir", root, "--inbox", manager.home.inbox_dir)
    assert done.returncode == 0, done.stderr
    (result,) = scan_once(manager, settle_s=0)

    assert result.error is None and result.outcome is not None
    assert (result.outcome.name, result.outcome.action) == ("demo", "installed")
    assert result.moved_to == manager.home.inbox_dir / "installed" / "Demo__v1__.bundle"


# --- the mount path, on a loop device (root only, where this machine allows it) ----------


def _attach_loop_device(image: Path) -> str:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("loop devices need root and /dev/loop-control")
    for tool in ("losetup", "mkfs.ext4", "blkid", "blockdev", "findmnt"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed here")
    attach = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, timeout=30
    )
    if attach.returncode != 0:
        pytest.skip(f"no loop device here: {attach.stderr.strip()}")
    return attach.stdout.strip()


def test_helper_mounts_a_device_read_only_and_cleans_up(stick: Path, tmp_path: Path):
    image = tmp_path / "stick.ext4"
    with open(image, "wb") as f:
        f.truncate(16 * 1024**2)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-d", str(stick), str(image)], capture_output=True, timeout=60
    )
    if made.returncode != 0 or shutil.which("losetup") is None:
        pytest.skip("cannot build an ext4 image here")
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    device = _attach_loop_device(image)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    me = pwd.getpwuid(os.getuid()).pw_name
    try:
        done = run_helper(
            "--inbox", inbox, "--owner", me, "--max-bytes", CAP, device[5:], TMPDIR=str(scratch)
        )
        assert done.returncode == 0, done.stderr
        mounted = re.search(rf"mounted {device} \(ext4\) with (\S+)", done.stderr)
        assert mounted, done.stderr
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(mounted.group(1).split(","))
        mounts = subprocess.run(["findmnt", "-rn", "-S", device], capture_output=True)
        assert mounts.stdout == b""  # unmounted again
        ro = subprocess.run(["blockdev", "--getro", device], capture_output=True, text=True)
        assert ro.stdout.strip() == "0"  # writable again for the operator's next use
    finally:
        left = subprocess.run(["findmnt", "-rn", "-o", "TARGET", "-S", device], capture_output=True)
        for target in left.stdout.decode().split():  # only if the helper failed to unmount
            subprocess.run(["umount", "-l", target], timeout=30)
        subprocess.run(["losetup", "--detach", device], timeout=30)
    copied = everything_in(inbox)
    assert {content: name for name, content in copied.items()} == COPIED
    assert list(scratch.iterdir()) == []  # the mount point is gone
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before  # not one byte written


# --- docs/operations.md ------------------------------------------------------------------


def test_operations_guide_names_the_installed_paths_and_the_status_headings():
    text = OPERATIONS.read_text()
    for needle in (
        "useradd --system",
        "/opt/appliance/bin/appliance",
        HELPER_INSTALLED,
        "journalctl -u appliance",
        "appliance status --json",
        "appliance doctor",
        "appliance outbox export",
        "appliance outbox import",
        "appliance relay process",
        "appliance report tco",
        "appliance bundle install",
    ):
        assert needle in text, needle
    section = text.split("## What each status line means", 1)[1].split("\n## ", 1)[0]
    headings = re.findall(r"^### (.+)$", section, re.M)
    expected = ["daemon", "models", "hardware", "GPU", "outbox", "uplinks", "budget", "errors"]
    assert headings == expected
