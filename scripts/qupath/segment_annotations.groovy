/*
 * Segment the nuclei inside the selected annotations with promptnucseg, from QuPath.
 *
 * With a slide open and one or more area annotations selected (tumour, stroma, a hot spot:
 * rectangles, ellipses, polygons, brush areas; holes count), this script
 *   1. exports the selected annotations as GeoJSON (what File > Export objects as GeoJSON writes),
 *   2. runs `promptnucseg segment <this slide> --out OUT --regions <that file>` and shows its
 *      progress in QuPath's log (View > Show log, or the script editor's output),
 *   3. imports the nuclei as detections, each a child of the annotation holding its prompt point
 *      (the run writes the annotation's QuPath id into each nucleus' metadata).
 * A second run on the same annotations replaces the nuclei the first one put under them.
 *
 * QuPath 0.5 or 0.6: Automate > Script editor > File > Open... > Run (or put it in your scripts
 * folder: Automate > Shared scripts). Set PROMPTNUCSEG below to the promptnucseg executable if
 * QuPath does not find it on its PATH (QuPath started from a desktop icon does not see a
 * terminal's virtual environment): e.g. /home/me/venv/bin/promptnucseg, or
 * C:\\Users\\me\\venv\\Scripts\\promptnucseg.exe. Every QuPath call here is checked against
 * QuPath's sources of v0.5.0 and v0.6.0 (QP, PathIO, PathObject, ImageServer, ROI, hierarchy).
 */
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObject

// ---- settings ----------------------------------------------------------------------------
String PROMPTNUCSEG = "promptnucseg"   // the executable: a full path when it is not on QuPath's PATH
String OUT = ""                        // the --out folder; "" = promptnucseg-runs in your home folder
List<String> EXTRA = ["--device", "auto"]  // more `segment` flags, e.g. ["--model", "typed", "--device", "cuda"]
int LOG_EVERY_SECONDS = 10             // how often the progress bar is copied to the log

// ---- what to segment ---------------------------------------------------------------------
def imageData = getCurrentImageData()
if (imageData == null) {
    println "promptnucseg: open a slide first, select the annotations to segment in, then run this script again"
    return
}
def server = imageData.getServer()
def uris = server.getURIs()
File slide = uris.size() == 1 && uris[0].getScheme() == "file" ? new File(uris[0]) : null
if (slide == null || !slide.isFile()) {
    println "promptnucseg: this image is not one local slide file (${uris}); open the slide file itself in QuPath"
    return
}
List<PathObject> annotations = getSelectedObjects().findAll { PathObject p -> p.isAnnotation() && p.hasROI() && p.getROI().isArea() }
if (annotations.isEmpty()) {
    println "promptnucseg: select one or more area annotations (rectangle, ellipse, polygon, brush) to segment in"
    return
}
File outDir = new File(OUT ?: new File(System.getProperty("user.home"), "promptnucseg-runs").getPath())
outDir.mkdirs()
String stem = slide.getName().replaceFirst(/\.[^.]+$/, "")
File regions = new File(outDir, "${stem}_selected_annotations.geojson")
exportObjectsToGeoJson(annotations, regions.getAbsolutePath(), "FEATURE_COLLECTION")

// ---- run promptnucseg --------------------------------------------------------------------
List<String> command = [PROMPTNUCSEG, "segment", slide.getAbsolutePath(), "--out", outDir.getAbsolutePath(),
                        "--regions", regions.getAbsolutePath(), "--overwrite"] + EXTRA
println "promptnucseg: " + command.join(" ")
Process process
try {
    process = new ProcessBuilder(command).redirectErrorStream(true).start()
} catch (IOException err) {
    println "promptnucseg: cannot start ${PROMPTNUCSEG} (${err.getMessage()}); set PROMPTNUCSEG at the top of this script to the full path of the promptnucseg executable"
    return
}
String resultLine = null
long lastShown = 0
StringBuilder line = new StringBuilder()
def reader = new InputStreamReader(process.getInputStream(), "UTF-8")
int c
while ((c = reader.read()) != -1) {
    if (c != 10 && c != 13) {  // the progress bar redraws itself with carriage returns
        line.append((char) c)
        continue
    }
    String text = line.toString().trim()
    line.setLength(0)
    if (text.isEmpty())
        continue
    if (text.startsWith("{\"slide\""))
        resultLine = text
    boolean bar = c == 13
    long now = System.currentTimeMillis()
    if (!bar || now - lastShown >= LOG_EVERY_SECONDS * 1000L) {
        println "promptnucseg: " + text
        lastShown = bar ? now : lastShown
    }
}
if (line.length() > 0)
    println "promptnucseg: " + line.toString().trim()
int status = process.waitFor()
if (status != 0 || resultLine == null) {
    println "promptnucseg: the run failed (exit status ${status}); its error is the line above"
    return
}

// ---- the nuclei into the annotations -----------------------------------------------------
def result = new groovy.json.JsonSlurper().parseText(resultLine)
def report = new groovy.json.JsonSlurper().parse(new File(result.report as String))
String geojson = report.outputs?.geojson
if (geojson == null || !geojson.endsWith(".geojson")) {
    println "promptnucseg: the run wrote no plain .geojson (keep geojson in --formats, without --gzip) in ${outDir}"
    return
}
List<PathObject> nuclei = PathIO.readObjects(new File(geojson))
Map<String, PathObject> byId = annotations.collectEntries { PathObject a -> [(a.getID().toString()): a] }
Map<PathObject, List<PathObject>> children = annotations.collectEntries { PathObject a -> [(a): []] }
int elsewhere = 0
nuclei.each { PathObject n ->
    PathObject parent = byId[n.getMetadata().get("region_id")]
    if (parent == null)
        elsewhere++
    else
        children[parent].add(n)
}
def hierarchy = imageData.getHierarchy()
annotations.each { PathObject a ->  // replace the nuclei an earlier run put here, keep anything else
    hierarchy.removeObjects(a.getChildObjects().findAll { PathObject p -> p.isDetection() }, true)
    a.addChildObjects(children[a])
}
fireHierarchyUpdate()
annotations.each { PathObject a ->
    String name = a.getName() ?: (a.getPathClass()?.toString() ?: "annotation")
    println "promptnucseg: ${name}: ${children[a].size()} nuclei"
}
println "promptnucseg: ${nuclei.size() - elsewhere} nuclei imported from ${geojson}" + (elsewhere ? " (${elsewhere} without a selected annotation, left out)" : "")
