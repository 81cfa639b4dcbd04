"""The runtime core: everything below the actors.

``protocol`` (sans-I/O wire layer), ``connection`` and ``session`` (one agent's socket and
conversation), ``router`` and ``supervisor`` (mailboxes and restarts), ``observe`` (events),
``budget``, the embedded ``server``, and the leaf helpers every layer may use (``redaction``,
``failpoints``, ``processes``, ``logging``, ``tuning``). Nothing here imports ``actors``,
``plans`` or the top of ``orchestrator`` (``runner``, ``cli``, ``jobs``): see
docs/architecture.md. The public building blocks are re-exported by ``orchestrator.lowlevel``.
"""
