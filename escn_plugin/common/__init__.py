"""Small helpers every layer of the package uses: named implementations, torch's default
dtype, progress lines. Nothing here imports from the rest of the package."""
