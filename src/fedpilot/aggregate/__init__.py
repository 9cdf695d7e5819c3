"""Server-side aggregation rules: FedAvg, STAgg with DWA."""
