"""Analysis: dataset views, modality-gap measurements, plots and the query/gallery inspector."""
