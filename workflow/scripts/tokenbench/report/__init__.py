"""The report: charts, pages and the static site."""
