"""The feature cache: the reader (numpy and pandas only), the crash-safe writer, the dump of a frozen
branchy net (one process or distributed), a cache from arrays, and re-profiling. The dump's names are imported
when first used, so reading a cache needs no torch."""
from ..core import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "FeatureCache": "reader", "CacheError": "reader", "SCHEMA_VERSION": "reader", "file_entry": "files",
    "file_sha256": "files", "row_slices": "files",
    "CacheLockedError": "writer",
    "DumpConfig": "dumping", "dump": "dumping", "dump_checkpoint": "dumping",
    "dump_distributed": "distributed", "dump_checkpoint_distributed": "distributed",
    "cache_from_arrays": "arrays", "cost_table": "arrays",
    "reprofile": "reprofiling", "import_costs": "imported",
})
