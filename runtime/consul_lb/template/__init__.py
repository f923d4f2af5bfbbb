"""Template mode: a generic Consul-to-file renderer in the spirit of consul-template.

Each ``--template SRC:DEST[:COMMAND]`` is a Jinja2 template rendered from Consul's catalog
(and KV keys, when the template asks for them) to DEST; COMMAND runs when DEST changed.
With ``--exec`` a child process is started after the first complete render and reloaded
(a signal, or a restart) whenever a file changed, as consul-template's exec mode does.

Split by job: ``args`` (command line), ``functions`` (what templates call), ``renderer``
(render, write, run commands), ``runner`` (--once, and the watching event loop).
"""
