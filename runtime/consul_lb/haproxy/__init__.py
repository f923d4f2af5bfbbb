"""Everything that talks to HAProxy: files and checks, supervision, reloads, runtime API."""
