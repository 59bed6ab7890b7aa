"""The back office: the ledger of record, employees and funds, units and their health, in a web page.

Built on Django because it brings, well kept and reviewed, what a money back office must not get
wrong by hand: logins and sessions, CSRF protection on every form, schema migrations that run the
same on SQLite (one office) and PostgreSQL (a company), and an ORM with real transactions and row
locks for the ledger. Never installed on a unit: it lives in the ``office`` extra, and nothing in
the unit's packages imports it.

Modules: ``setup`` (settings built in code from a database URL), ``models`` (tables), ``ledger``
(balances, top-ups, payroll month end), ``ingest`` (units' signed journal batches), ``bundles``
(signed per-unit bundles), ``unit_api`` (the signed-request API units sync with), ``units`` (a
technician's unit actions, heartbeat history), ``health`` (unhealthy units, alerts), ``views``/``unit_pages``/
``urls`` (pages), ``server`` (`vendor-node office serve`),
``unit_client`` (a signed-request client for tests and the load bench).
"""
