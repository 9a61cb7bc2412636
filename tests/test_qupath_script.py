"""scripts/qupath/segment_annotations.groovy: Groovy syntax (groovy-parser, when installed) and the
QuPath names it calls, each read in QuPath's sources at v0.5.0 and v0.6.0 (docs/qupath-annotations.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "qupath"
SCRIPT = SCRIPTS / "segment_annotations.groovy"

# QuPath API the script may call: class.method as found in qupath-core(-processing) at v0.5.0 and v0.6.0
QUPATH_CHECKED = {
    "getCurrentImageData": "QP",
    "getSelectedObjects": "QP",
    "exportObjectsToGeoJson": "QP",
    "fireHierarchyUpdate": "QP",
    "getServer": "ImageData",
    "getHierarchy": "ImageData",
    "getURIs": "ImageServer",
    "isArea": "ROI",
    "readObjects": "PathIO",
    "removeObjects": "PathObjectHierarchy",
    "isAnnotation": "PathObject",
    "isDetection": "PathObject",
    "hasROI": "PathObject",
    "getROI": "PathObject",
    "getID": "PathObject",
    "getMetadata": "PathObject",
    "getChildObjects": "PathObject",
    "addChildObjects": "PathObject",
    "getName": "PathObject",
    "getPathClass": "PathObject",
}
# the JDK's and Groovy's own methods and constructors it uses
JDK_GROOVY = {
    "File",
    "InputStreamReader",
    "ProcessBuilder",
    "StringBuilder",
    "JsonSlurper",
    "add",
    "append",
    "currentTimeMillis",
    "endsWith",
    "get",
    "getAbsolutePath",
    "getInputStream",
    "getMessage",
    "getPath",
    "getProperty",
    "getScheme",
    "isEmpty",
    "isFile",
    "join",
    "length",
    "mkdirs",
    "parse",
    "parseText",
    "read",
    "redirectErrorStream",
    "replaceFirst",
    "setLength",
    "size",
    "start",
    "startsWith",
    "toString",
    "trim",
    "waitFor",
    "println",
}


def _code() -> str:
    text = SCRIPT.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)  # block comments
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # strings
    return re.sub(r"//[^\n]*", "", text)


def test_the_script_calls_only_checked_qupath_names():
    code = _code()
    methods = set(re.findall(r"\.\s*([A-Za-z_]\w*)\s*\(", code))
    calls = set(re.findall(r"(?<![.\w])([A-Za-z_]\w*)\s*\(", code)) - {
        "if",
        "while",
        "for",
        "catch",
        "switch",
        "return",
    }
    unknown = sorted((methods | calls) - set(QUPATH_CHECKED) - JDK_GROOVY)
    assert not unknown, f"calls not checked against QuPath's sources: {unknown}"
    assert {"exportObjectsToGeoJson", "readObjects", "addChildObjects", "getMetadata"} <= methods | calls
    assert '"--regions"' in SCRIPT.read_text() and 'n.getMetadata().get("region_id")' in SCRIPT.read_text()


@pytest.mark.parametrize("name", ["segment_annotations.groovy", "import_promptnucseg.groovy"])
def test_the_scripts_parse_as_groovy(name):
    parser = pytest.importorskip(
        "groovy_parser.parser", reason="pip install groovy-parser (a Groovy 3 grammar) to parse the QuPath scripts"
    )
    parser.parse_groovy_content((SCRIPTS / name).read_text())
