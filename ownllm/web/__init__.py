"""The web dashboard served by `ownllm serve` at `/`.

Plain HTML, CSS and ES modules under `static/` — no build step, no CDN, so it
works on an air-gapped machine straight from the installed package. The pages
talk to the same public API as any client (`/v1/...`, with the signed-in key),
plus a few read-only helpers under `/v1/dashboard/` (`ownllm.web.dashboard`).
"""
