# NAME: a cell in Python. The supervisor gives python3 mcpcell.py (listed
# under "libraries" in the manifest) and then this file on stdin, both
# verified against the manifest's SHA-256; docs/writing-cells.md.
import mcpcell


@mcpcell.tool("TOOL")
def run(args, ctx):
    text = args["text"]
    # The tool's work goes here.
    result = text[::-1]
    return mcpcell.Result(result, {"result": result})


mcpcell.serve()
