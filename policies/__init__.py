"""The shipped policy files, installed as the package ``appliance.policies``.

This folder holds data, not code: the module exists so that importlib.resources finds
``default.toml`` the same way in a source checkout, an editable install and a wheel
(pyproject.toml maps the package to this folder; see appliance.policy.load).
"""
