"""DTGen runner: queue DTGen workflows on ComfyUI servers over the HTTP API (``queue``), and a
one-command demo (``demo``). Stdlib HTTP only; no ComfyUI import. See docs/queue-client.md."""
