import Foundation

/// A document that did not decode, said in one line for the person who wrote it: which
/// field, and what it should hold. Swift's own description of a `DecodingError` is a dump
/// of coding keys and debug text, sometimes over several lines, written for programmers.
public enum DecodingProblem {
    /// One line for a `DecodingError` from any decoder (JSON bodies, YAML manifests).
    public static func describe(_ error: DecodingError) -> String {
        switch error {
        case .typeMismatch(let type, let context):
            return "\(subject(context.codingPath)): expected \(expectation(type))"
        case .valueNotFound(let type, let context):
            return "\(subject(context.codingPath)): expected \(expectation(type)), found null"
        case .keyNotFound(let key, let context):
            return "missing field '\(path(context.codingPath + [key]))'"
        case .dataCorrupted(let context):
            let detail = oneLine(context.debugDescription)
            return context.codingPath.isEmpty ? detail : "\(subject(context.codingPath)): \(detail)"
        @unknown default:
            return oneLine("\(error)")
        }
    }

    /// One line for a JSON `body` that `JSONDecoder` refused with `error`. When the decoder
    /// only says "not valid JSON" (it keeps neither the cause nor the place), the body is
    /// parsed again by `JSONSerialization`, whose message says where it breaks.
    public static func describeJSON(_ error: any Error, body: Data) -> String {
        guard let decoding = error as? DecodingError else { return "not JSON: \(oneLine("\(error)"))" }
        guard case .dataCorrupted(let context) = decoding, context.codingPath.isEmpty else {
            return describe(decoding)
        }
        if body.allSatisfy({ [0x20, 0x09, 0x0A, 0x0D].contains($0) }) {
            return "the body is empty; send a JSON object"
        }
        let cause = context.underlyingError ?? syntaxError(body)
        guard let cause else {
            // Well-formed JSON that the decoder still calls invalid: swift-foundation says so
            // when a number does not fit the integer field it is read into.
            return "a number does not fit its field: whole numbers within range are expected"
        }
        let detail = (cause as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(cause)"
        return "not JSON: \(oneLine(detail))"
    }

    private static func syntaxError(_ body: Data) -> (any Error)? {
        do {
            _ = try JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed])
            return nil
        } catch {
            return error
        }
    }

    /// The field as the author wrote it: `sshKeys[0]`, `spec.image`.
    static func path(_ keys: [any CodingKey]) -> String {
        var text = ""
        for key in keys {
            if let index = key.intValue {
                text += "[\(index)]"
            } else {
                text += text.isEmpty ? key.stringValue : ".\(key.stringValue)"
            }
        }
        return text
    }

    private static func subject(_ keys: [any CodingKey]) -> String {
        keys.isEmpty ? "the top level" : "field '\(path(keys))'"
    }

    /// What a value of `type` looks like to someone writing JSON or YAML. Container types
    /// are recognised by name: JSONDecoder reports `Array<Any>`/`Dictionary<String, Any>`,
    /// Yams its `Node.Sequence`, `Node.Mapping` and `Node.Scalar`.
    static func expectation(_ type: Any.Type) -> String {
        if type is any BinaryInteger.Type || type is any BinaryFloatingPoint.Type { return "a number" }
        if type is String.Type || type is Substring.Type || type is Character.Type { return "a string" }
        if type is Bool.Type { return "true or false" }
        let name = String(describing: type)
        if name.hasPrefix("Array<") || name.hasPrefix("Set<") || name == "Sequence" { return "a list" }
        if name.hasPrefix("Dictionary<") || name == "Mapping" { return "an object" }
        if name == "Scalar" { return "a single value, not a list or an object" }
        return "a value of type \(name)"
    }

    private static func oneLine(_ text: String) -> String {
        text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            .joined(separator: " ")
    }
}
