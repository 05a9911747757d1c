import StrictJSON

/// Every problem of a manifest `validate` can find in one run, not only the
/// first: the parser stops at its first error (it builds the manifest as it
/// reads), so after each round the fields the errors name are set aside and
/// the document is parsed again, until it parses or nothing more can be set
/// aside. An error about a field that was set aside (it is now "missing")
/// is an artefact of the method and is dropped, and so is everything after
/// it: a required field that is wrong ends the search there. An error in an
/// array element sets the whole array aside, never the element alone (the
/// indices of the rest would shift in the messages).
public enum ManifestDiagnostics {
    /// At most this many parses of one file.
    static let maxRounds = 32

    public static func problems(bytes: [UInt8], path: String) -> [ConfigError] {
        func parse(_ b: [UInt8]) -> ConfigError? {
            do {
                _ = try CellManifest.parse(bytes: b, path: path, manifestSHA256: "")
                return nil
            } catch { return error }
        }
        guard let first = parse(bytes) else { return [] }
        guard case .object(var doc)? = try? JSONParser.parse(bytes) else { return first.all }
        var found = first.all
        var setAside = Set<String>()
        var latest = first.all
        for _ in 0..<maxRounds {
            var progressed = false
            for e in latest where remove(e.field, from: &doc) {
                setAside.insert(e.field)
                progressed = true
            }
            guard progressed, let next = parse(JSONValue.object(doc).serializedBytes()) else { break }
            let artefact = next.all.contains { e in
                setAside.contains { e.field == $0 || e.field.hasPrefix($0 + ".") || e.field.hasPrefix($0 + "[") }
            }
            if artefact { break }
            latest = next.all.filter { e in !found.contains { $0.description == e.description } }
            if latest.isEmpty { break }
            found += latest
        }
        return found
    }

    /// Removes the member a dotted field path (`tools[0].limits.cpuSeconds`)
    /// names, or the array holding the element it names (`phases[2]`);
    /// false if there is no such member.
    static func remove(_ field: String, from doc: inout JSONObject) -> Bool {
        guard !field.isEmpty else { return false }
        var steps: [(key: String, indices: [Int])] = []
        for part in field.split(separator: ".", omittingEmptySubsequences: false) {
            var key = Substring(part)
            var indices: [Int] = []
            while key.hasSuffix("]"), let open = key.lastIndex(of: "[") {
                guard let i = Int(key[key.index(after: open)..<key.index(before: key.endIndex)]) else { return false }
                indices.insert(i, at: 0)
                key = key[..<open]
            }
            guard !key.isEmpty else { return false }
            steps.append((String(key), indices))
        }
        // An element of an array: the whole array is set aside (removing the
        // element would shift the indices the other messages name).
        steps[steps.count - 1].indices = []
        return remove(steps[...], from: &doc)
    }

    private static func remove(_ steps: ArraySlice<(key: String, indices: [Int])>, from o: inout JSONObject) -> Bool {
        guard let step = steps.first else { return false }
        if steps.count == 1 {
            guard o.contains(step.key) else { return false }
            o[step.key] = nil
            return true
        }
        guard var value = o[step.key] else { return false }
        let done = remove(steps.dropFirst(), indices: step.indices[...], in: &value)
        if done { o[step.key] = value }
        return done
    }

    private static func remove(
        _ steps: ArraySlice<(key: String, indices: [Int])>, indices: ArraySlice<Int>, in value: inout JSONValue
    ) -> Bool {
        if let i = indices.first {
            guard case .array(var a) = value, a.indices.contains(i) else { return false }
            let done = remove(steps, indices: indices.dropFirst(), in: &a[i])
            if done { value = .array(a) }
            return done
        }
        guard case .object(var o) = value else { return false }
        let done = remove(steps, from: &o)
        if done { value = .object(o) }
        return done
    }
}
