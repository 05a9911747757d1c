# python_run: runs a Python snippet the model wrote, in this worker, and
# returns what it printed. The sandbox is the worker's: no network (no
# socket syscall), writes only to the scratch directory, no processes,
# CPU/memory/time/output limits from the manifest.
import contextlib
import io
import traceback

import mcpcell

LIMIT = 64 * 1024


@mcpcell.tool("python_run")
def python_run(args, ctx):
    out, err = io.StringIO(), io.StringIO()
    error = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(args["code"], "<snippet>", "exec"), {"__name__": "__main__"})
        except SystemExit as e:
            error = f"SystemExit: {e.code}"
        except BaseException as e:
            # The snippet's own frames only, not this runner's.
            error = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next, limit=5))
    stdout, stderr = out.getvalue()[:LIMIT], err.getvalue()[:LIMIT]
    text = stdout + (("\n[stderr]\n" + stderr) if stderr else "") + (("\n[error]\n" + error) if error else "")
    return mcpcell.Result(text or "(no output)", {"stdout": stdout, "stderr": stderr, "error": error})


mcpcell.serve()
