"""The import pipeline, above the store and the converters: read a source, choose its engine kind,
write the model's files into a staging folder, check them, and hand the result to the store."""

from cortex.importer.pipeline import Importer

__all__ = ["Importer"]
