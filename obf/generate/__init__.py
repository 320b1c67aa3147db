"""Generation: the decode loop and its sampling, plans for files of a declared size, files in ->
files out, and the ledger of what obf wrote. Imports no torch.
"""

from obf.generate.files import Prepared, Result, generate_files, ingest_config_of, output_key, output_name, prepare
from obf.generate.ledger import LEDGER, read_ledger, record_outputs, written_by_obf
from obf.generate.planning import Plan, plan
from obf.generate.sampling import DECODING, RowSpec, SamplingOptions, generate

__all__ = [
    "DECODING",
    "generate",
    "generate_files",
    "ingest_config_of",
    "LEDGER",
    "output_key",
    "output_name",
    "Plan",
    "plan",
    "prepare",
    "Prepared",
    "read_ledger",
    "record_outputs",
    "Result",
    "RowSpec",
    "SamplingOptions",
    "written_by_obf",
]
