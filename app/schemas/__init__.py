"""Request and response bodies: `ThingCreate` in, `ThingPublic` / `ThingsPublic` (data + count) out."""
