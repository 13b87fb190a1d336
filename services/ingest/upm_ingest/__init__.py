"""The ingest service: Segment-compatible gRPC and HTTP intake of events into the event log."""
