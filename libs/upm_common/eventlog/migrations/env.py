from upm_common.eventlog.tables import metadata
from upm_common.migrations import run_env

run_env(target_metadata=metadata, component="eventlog")
