import Foundation
import Testing

@testable import VCModel

/// A body or manifest that does not decode is refused in one line that names the field and
/// what it should hold, never with Swift's multi-line `DecodingError` dump.
@Suite struct DecodingProblemTests {
    func problem(_ json: String) -> String {
        let body = Data(json.utf8)
        do {
            _ = try JSONDecoder().decode(ClusterSpec.self, from: body)
            return "decoded"
        } catch {
            return DecodingProblem.describeJSON(error, body: body)
        }
    }

    static let complete = #""name":"a","image":"tiny","vcpus":1,"memoryMiB":128"#

    @Test func aMistypedFieldIsNamedWithWhatItShouldHold() {
        #expect(problem(#"{\#(Self.complete),"vms":"three","sshKeys":[]}"#) == "field 'vms': expected a number")
        #expect(problem(#"{\#(Self.complete),"vms":true,"sshKeys":[]}"#) == "field 'vms': expected a number")
        #expect(problem(#"{\#(Self.complete),"vms":1,"sshKeys":"key"}"#) == "field 'sshKeys': expected a list")
    }

    @Test func anElementOfAListIsNamedByItsIndex() {
        #expect(problem(#"{\#(Self.complete),"vms":1,"sshKeys":["k",2]}"#) == "field 'sshKeys[1]': expected a string")
    }

    @Test func aMissingOrNullFieldIsNamed() {
        #expect(problem(#"{"name":"a","vms":1,"vcpus":1,"memoryMiB":128,"sshKeys":[]}"#) == "missing field 'image'")
        #expect(
            problem(#"{\#(Self.complete),"vms":null,"sshKeys":[]}"#) == "field 'vms': expected a number, found null")
    }

    @Test func somethingOtherThanAnObjectIsRefusedAtTheTopLevel() {
        #expect(problem("[1]") == "the top level: expected an object")
    }

    @Test func brokenJSONSaysWhereItBreaks() {
        #expect(problem("{\n\"vms\": x}") == "not JSON: Invalid value around character 9.")
        #expect(problem("{\"name\": \"a\", \"vms\": 3 x}").hasPrefix("not JSON: "))
        #expect(problem(#"{"name": "a", "vms": 3,"#).hasPrefix("not JSON: "))
        #expect(problem("") == "the body is empty; send a JSON object")
    }

    @Test func aFractionWhereAWholeNumberBelongsIsNotCalledBrokenJSON() {
        #expect(
            problem(#"{\#(Self.complete),"vms":2.5,"sshKeys":[]}"#)
                == "a number does not fit its field: whole numbers within range are expected")
    }

    @Test func nestedPathsReadAsTheAuthorWroteThem() {
        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int?
            init(stringValue: String) { self.stringValue = stringValue }
            init(intValue: Int) {
                stringValue = "Index \(intValue)"
                self.intValue = intValue
            }
        }
        let context = DecodingError.Context(
            codingPath: [Key(stringValue: "clusters"), Key(intValue: 2)], debugDescription: "line one\nline two")
        #expect(
            DecodingProblem.describe(.keyNotFound(Key(stringValue: "image"), context))
                == "missing field 'clusters[2].image'")
        #expect(DecodingProblem.describe(.dataCorrupted(context)) == "field 'clusters[2]': line one line two")
        #expect(
            DecodingProblem.describe(.typeMismatch([String: Int].self, context))
                == "field 'clusters[2]': expected an object")
    }
}
