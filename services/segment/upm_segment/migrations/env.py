from upm_common.migrations import run_env
from upm_segment.store.tables import metadata

run_env(target_metadata=metadata, component="segment")
