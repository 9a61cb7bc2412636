/*
 * Import a promptnucseg run's nuclei into the image open in QuPath, and give each class the
 * colour the run chose for it.
 *
 * `promptnucseg segment` writes one QuPath detection per nucleus to <out>/<stem>/<stem>.geojson
 * (<stem>.geojson.gz with --gzip), in level-0 pixels of the slide it segmented: open that
 * slide, at full resolution, before running this.
 *
 * Why a script when File > Import objects exists: it is one click from Automate > Shared
 * scripts (put this file in your QuPath scripts folder); it reads .geojson.gz as well as
 * .geojson; it streams the file feature by feature, so a whole slide's millions of nuclei are
 * never held as one JSON tree on top of the objects; it replaces the detections of an earlier
 * import instead of doubling them; and it sets the class colours from the file even for class
 * names QuPath already knows (its importer keeps the colour of an existing class).
 *
 * QuPath 0.4 or later: Automate > Script editor > File > Open... > Run. The script editor
 * provides getCurrentImageData(), getQuPath() and fireHierarchyUpdate().
 */
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import com.google.gson.stream.JsonReader
import java.util.zip.GZIPInputStream
import qupath.lib.common.ColorTools
import qupath.lib.io.GsonTools
import qupath.lib.objects.PathObject
import qupath.lib.objects.classes.PathClass

// ---- settings ----------------------------------------------------------------------------
String GEOJSON = ""                // <stem>.geojson or <stem>.geojson.gz; "" opens a file chooser
boolean REPLACE_DETECTIONS = true  // remove the image's detections first, so a re-import does not double them

// ---- the file ----------------------------------------------------------------------------
def imageData = getCurrentImageData()
if (imageData == null) {
    println "promptnucseg import: open the slide that was segmented first, then run this script again"
    return
}
File file = GEOJSON ? new File(GEOJSON) : chooseGeoJson()
if (file == null) {
    println "promptnucseg import: no file chosen; set GEOJSON at the top of the script to the run's <stem>.geojson(.gz)"
    return
}
if (!file.isFile()) {
    println "promptnucseg import: ${file} does not exist; point GEOJSON at <out>/<stem>/<stem>.geojson(.gz)"
    return
}

// ---- stream the features -----------------------------------------------------------------
def gson = GsonTools.getInstance()
List<PathObject> nuclei = new ArrayList<>()
Map<String, Integer> colours = new LinkedHashMap<>()  // class name -> packed RGB, in first-seen order
InputStream input = new BufferedInputStream(new FileInputStream(file), 1 << 20)
if (file.name.toLowerCase().endsWith(".gz"))
    input = new GZIPInputStream(input, 1 << 16)
new JsonReader(new InputStreamReader(input, "UTF-8")).withCloseable { JsonReader reader ->
    reader.beginObject()
    while (reader.hasNext()) {
        if (reader.nextName() != "features") {
            reader.skipValue()
            continue
        }
        reader.beginArray()
        while (reader.hasNext()) {
            JsonObject feature = JsonParser.parseReader(reader).getAsJsonObject()
            JsonObject properties = feature.getAsJsonObject("properties")
            JsonObject classification = properties == null ? null : properties.getAsJsonObject("classification")
            if (classification != null) {
                String name = classification.get("name").getAsString()
                def rgb = classification.getAsJsonArray("color")
                if (rgb != null && !colours.containsKey(name))
                    colours[name] = ColorTools.packRGB(rgb.get(0).getAsInt(), rgb.get(1).getAsInt(), rgb.get(2).getAsInt())
            }
            nuclei.add(gson.fromJson(feature, PathObject))
        }
        reader.endArray()
    }
}

// ---- into the image ----------------------------------------------------------------------
def server = imageData.getServer()
int outside = nuclei.count { PathObject p ->
    def roi = p.getROI()
    roi.getCentroidX() < 0 || roi.getCentroidY() < 0 || roi.getCentroidX() >= server.getWidth() || roi.getCentroidY() >= server.getHeight()
}
def hierarchy = imageData.getHierarchy()
if (REPLACE_DETECTIONS)
    hierarchy.removeObjects(hierarchy.getDetectionObjects(), true)
hierarchy.addObjects(nuclei)
colours.each { String name, Integer rgb -> PathClass.fromString(name).setColor(rgb) }
def qupath = getQuPath()
if (qupath != null) {  // list the run's classes in the Annotations tab (a JavaFX list: its own thread)
    javafx.application.Platform.runLater {
        def available = qupath.getAvailablePathClasses()
        colours.keySet().each { String name ->
            def pathClass = PathClass.fromString(name)
            if (!available.contains(pathClass))
                available.add(pathClass)
        }
    }
}
fireHierarchyUpdate()

def perClass = nuclei.countBy { PathObject p -> p.getPathClass() == null ? "(none)" : p.getPathClass().toString() }
println "promptnucseg import: ${nuclei.size()} nuclei from ${file.name}: " + perClass.collect { k, v -> "${k} ${v}" }.join(", ")
if (outside > 0)
    println "promptnucseg import: warning: ${outside} nuclei lie outside this image (${server.getWidth()}x${server.getHeight()} px): is it the slide that was segmented, at full resolution?"


/** A file chooser on QuPath 0.5+ (FileChoosers) or 0.4 (Dialogs); null when cancelled or unavailable. */
File chooseGeoJson() {
    String title = "promptnucseg nuclei (.geojson, .geojson.gz)"
    try {
        def choosers = Class.forName("qupath.fx.dialogs.FileChoosers")
        return choosers.promptForFile(title, choosers.createExtensionFilter("GeoJSON", "*.geojson", "*.geojson.gz", "*.gz", "*.json"))
    } catch (ClassNotFoundException ignored) {
        def dialogs = Class.forName("qupath.lib.gui.dialogs.Dialogs")
        return dialogs.promptForFile(title, null, "GeoJSON", ".geojson", ".gz", ".json")
    }
}
