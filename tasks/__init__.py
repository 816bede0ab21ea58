"""What runs inside one grid cell, on one device. Importable without Ray."""
