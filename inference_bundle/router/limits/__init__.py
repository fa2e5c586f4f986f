"""Limits and usage: the rules read from the router's settings (``rules``), the limiter on
the request path (``limiter``), the ledger's counters and usage records (``ledger``,
``counter_state``, ``usage_reports``), and the settings file reread when it changes
(``reload``)."""
