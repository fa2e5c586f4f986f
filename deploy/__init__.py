"""Deploy tooling: turns the endpoint catalog into Globus Compute endpoints."""
