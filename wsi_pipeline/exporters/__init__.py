"""Final outputs, each streamed from the journaled batches in order (memory flat in the
number of nuclei): QuPath GeoJSON, a zarr store, a feature table, an AnnData file, a label TIFF."""
from .anndata_export import write_anndata
from .geojson_export import write_geojson
from .label_tiff import write_label_tiff
from .table_export import write_table
from .zarr_export import write_label_raster, write_zarr

__all__ = ["write_anndata", "write_geojson", "write_label_raster", "write_label_tiff", "write_table", "write_zarr"]
