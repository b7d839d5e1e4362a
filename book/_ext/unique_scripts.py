"""Each script once per page.

sphinx-thebe 0.3.1 and sphinx-togglebutton register their inline scripts twice under
Jupyter Book 1 (once with the filename ``None``, once with ``""``), and a second ``const
THEBE_JS_URL`` is a script error on every page.  This drops repeated scripts from each
page, keeping the first.
"""

from __future__ import annotations


def _key(script) -> tuple[str, str]:
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", script)
    return (str(filename or ""), repr(sorted(attributes.items())))


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        if _key(script) not in seen:
            seen.add(_key(script))
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
