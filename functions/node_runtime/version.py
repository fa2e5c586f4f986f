"""The node runtime's version, written here only: the package, its distribution
(``functions/pyproject.toml`` reads it) and the agent inside a model server all take it from
this module, which imports nothing."""

# Bumped when what the router sends or gets back changes (0.2: the spec's role, batch servers
# of their own, batches that restart a dead server; 0.3: the data plane's agent, "dial" and
# "send" in the request; 0.4: a dial per router URL, a connection to each, and batches that
# pause; 0.5: the scheduler's estimated start and queue position in the job listing; 0.6: the
# newer APIs; 0.7: bounded records, windows, heartbeats and the server's key; 0.8: the
# server's own load, sent with each heartbeat; 0.10: a whole answer that fits one record
# comes as one ANSWER record, to a router that asks for it): the router
# checks it on every call, and a deploy installs the runtime into a site's environment only
# when this differs. A patch release changes only what the node does (0.9.1: a server's scratch
# folder goes when it ends however it ends; 0.9.2: a server whose engine died hangs up
# instead of answering 500s, and a traced request's span is plain fields until exported).
__version__ = "0.10.0"
