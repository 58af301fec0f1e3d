"""Where work is kept: the store (commits, markers, run.json), leases, fingerprints."""
