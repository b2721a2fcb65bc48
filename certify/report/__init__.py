"""Results shared by every engine: one record type, written incrementally as JSON lines."""
from certify.report.records import Record, ResultWriter, read_records

__all__ = ["Record", "ResultWriter", "read_records"]
