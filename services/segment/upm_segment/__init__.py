"""The segment service: definitions, counts over the profile read model, real-time membership."""
