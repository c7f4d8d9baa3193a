"""Fixtures every test module may use by name, without importing them.

They live in tests/support/ beside the helpers they need; registering the modules here (instead
of importing a fixture into each test module, which linters see as an unused import that the test
parameter then shadows) keeps one definition and one place that says where each comes from:

* ``dovecot_server`` (session), ``dovecot`` — a private Dovecot (tests/support/dovecot.py);
* ``imap_dovecot`` — that Dovecot with an empty INBOX and no other folders (tests/support/imap.py);
* ``popa3d`` — a running popa3d with an empty mbox (tests/support/popa3d.py);
* ``clamd_private`` — a clamd of the test's own, which it may stop and start (tests/support/clamd.py);
* ``database``, ``store_url`` — SQLite, PostgreSQL and MariaDB, one test run each
  (tests/support/databases.py).
"""

pytest_plugins = [
    "tests.support.clamd",
    "tests.support.databases",
    "tests.support.dovecot",
    "tests.support.imap",
    "tests.support.popa3d",
]
