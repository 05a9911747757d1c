import CellKit
import StrictJSON

// The smallest useful cell: returns its "text" argument. Built as a static
// executable without Foundation; it is the no-op cell of the benchmarks.
Cell.main { request, _ in
    let text = request.arguments["text"]?.stringValue ?? ""
    return .text(
        text, structured: .object(JSONObject([("text", .string(text)), ("length", .int(Int64(text.utf8.count)))])))
}
