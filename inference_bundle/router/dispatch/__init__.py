"""Getting one request to a server: down a node's connection when one is up, else as a task
through the endpoint's executor (``dispatcher``); the answers and streams that come back
(``answers``), the errors a dispatched request ends in (``errors``), and what the
scheduler's listing says of a route's job (``job_lookup``, ``scheduler_listing``)."""
