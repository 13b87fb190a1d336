"""Storage of the segment service: its own tables and reads of the profile read model."""
