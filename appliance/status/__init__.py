"""The field tech's view of a box: one document, built by the daemon or from APPLIANCE_HOME.

``GET /status`` and ``appliance status --json`` give the same document (``document.build``);
``advice`` turns it into problems, each with what to do, and the health that sets the CLI's
exit code: 0 healthy, 1 degraded, 2 down.
"""
