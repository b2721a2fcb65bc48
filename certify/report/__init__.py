"""Results shared by every engine: one record type, written incrementally as JSON lines after a
provenance header."""
from certify.report.records import Record, ResultWriter, read_provenance, read_records, read_result_file

__all__ = ["Record", "ResultWriter", "read_records", "read_provenance", "read_result_file"]
