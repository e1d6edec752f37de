"""The OSC front end: the daemon's sockets (``server``), its addresses (``routes``), the wire codec
(``transport``) and the ``serve``/``send`` commands (``cli_glue``). ``python -m bridge.frontends.osc.routes``
prints the README's address table."""
