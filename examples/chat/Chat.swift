// A chat that remembers what you tell it about yourself, on engram.
//
//   chat MODEL STORE
//
// Type a turn and press Enter. Statements about you ("My cat is called Miso.") are learned in
// the background after the reply, while you type the next turn; one that changes an earlier
// fact ("We moved to Coimbra.") replaces it. /remember TEXT learns TEXT whatever its form,
// /forget WHAT forgets the fact WHAT names (its words or its number), /reset starts a new
// conversation (what was learned stays), /quit or end of input ends. Asked about yourself
// something you never told, it says so instead of inventing an answer. Input from a pipe
// waits for each fact before the next turn, so a script gets the same answers on any machine.
// Build it as an executable target beside the generated binding (bindings/swift/engram.swift,
// engramFFI.h and engramFFI.modulemap, linked with libengram_uniffi); see bindings/README.md.
// No Swift toolchain runs here: ffi/uniffi/tests/bindings.rs parses this file and checks that
// every call it makes exists in the generated binding.

import Foundation

/// Says what the background learner did; it runs on the learner's thread.
final class Told: MemoryListener {
    func onRemembered(text: String, number: UInt64, replaced: String?, seconds: Double) -> Bool {
        let was = replaced.map { " (replaces \"\($0)\")" } ?? ""
        print("  [learned #\(number): \"\(text)\"\(was) in \(String(format: "%.1f", seconds)) s]")
        return true
    }

    func onForgot(text: String, number: UInt64) -> Bool {
        print("  [forgot #\(number): \"\(text)\"]")
        return true
    }

    func onFailed(what: String, error: String) -> Bool {
        print("  [could not learn or forget \"\(what)\": \(error)]")
        return true
    }
}

/// Shows the reply as it is written.
final class Printer: TokenListener {
    func onToken(piece: String) -> Bool {
        print(piece, terminator: "")
        fflush(stdout)
        return true
    }
}

let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    FileHandle.standardError.write("usage: chat MODEL STORE\n".data(using: .utf8)!)
    exit(2)
}
let scripted = isatty(STDIN_FILENO) == 0
do {
    let engram = try Engram.open(modelPath: arguments[1], memoryPath: arguments[2])
    let chat = try Chat(engram: engram, learn: true, listener: Told())
    chat.setAbstention(reply: "You haven't told me that.")
    while let line = readLine() {
        let turn = line.trimmingCharacters(in: .whitespaces)
        if turn.isEmpty {
            continue
        }
        if turn == "/quit" {
            break
        }
        if turn == "/reset" {
            chat.reset()
            print("(new conversation)")
        } else if turn.hasPrefix("/remember ") {
            try chat.remember(statement: String(turn.dropFirst("/remember ".count)))
        } else if turn.hasPrefix("/forget ") {
            try chat.forget(what: String(turn.dropFirst("/forget ".count)))
        } else {
            print("> \(turn)")
            _ = try chat.say(text: turn, maxTokens: 64, listener: Printer())
            print("")
        }
        if scripted {
            try chat.waitIdle()
        }
    }
    // What is still queued is learned before the store is closed.
    try chat.waitIdle()
} catch {
    FileHandle.standardError.write("chat: \(error)\n".data(using: .utf8)!)
    exit(1)
}
