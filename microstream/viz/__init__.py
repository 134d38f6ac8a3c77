"""Pictures: the layered DAG drawing engine (`dag`, SVG and DOT with no external tools), the logical graph as
a picture (`pipeline`) and a placement's picture and report (`placement`)."""
