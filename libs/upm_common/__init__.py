"""What every upm service shares: settings, logging, server bootstrap, errors, storage factories."""
