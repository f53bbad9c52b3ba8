"""What model calls cost: table.py (PriceTable: the shipped prices.yaml plus config overrides,
snapshot-name resolution, exact Decimal costs and pre-call estimates). Import from the modules.
"""
