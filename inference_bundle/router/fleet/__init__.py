"""What each model is doing and where it should run: its state (``states``), when it is
expected to be ready (``estimates``), which cluster a request goes to (``placement``),
maintenance windows (``maintenance``) and the endpoints' warm schedules
(``warm_schedules``)."""
