"""``cnnspec serve``: a trained run as an HTTP model server (Starlette and uvicorn, the
``serve`` extra). It owns the wire formats (the Open Inference Protocol, image uploads),
dynamic batching, metrics, limits and the page; the numbers come from ``inference``'s
``Scorer`` and ``search``'s index, as ``predict`` and ``similar`` compute them. Imports
``inference``, ``search``, ``runs`` and below; nothing imports it but the CLI."""
