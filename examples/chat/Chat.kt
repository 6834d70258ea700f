// A chat that remembers what you tell it about yourself, on engram.
//
//   java -Djna.library.path=DIR -cp chat.jar:jna.jar engram.examples.ChatKt MODEL STORE
//
// Type a turn and press Enter. Statements about you ("My cat is called Miso.") are learned in
// the background after the reply, while you type the next turn; one that changes an earlier
// fact ("We moved to Coimbra.") replaces it. /remember TEXT learns TEXT whatever its form,
// /forget WHAT forgets the fact WHAT names (its words or its number), /reset starts a new
// conversation (what was learned stays), /quit or end of input ends. Input from a pipe waits
// for each fact before the next turn, so a script gets the same answers on any machine.
// Compile with the generated binding: kotlinc bindings/kotlin/uniffi/engram/engram.kt Chat.kt
// -cp jna.jar -include-runtime -d chat.jar

package engram.examples

import kotlin.system.exitProcess
import uniffi.engram.Chat
import uniffi.engram.Engram
import uniffi.engram.EngramException
import uniffi.engram.MemoryListener
import uniffi.engram.TokenListener

/** Says what the background learner did; it runs on the learner's thread. */
private object Told : MemoryListener {
    override fun onRemembered(text: String, number: ULong, replaced: String?, seconds: Double): Boolean {
        val was = if (replaced != null) " (replaces \"$replaced\")" else ""
        println("  [learned #$number: \"$text\"$was in ${"%.1f".format(seconds)} s]")
        return true
    }

    override fun onForgot(text: String, number: ULong): Boolean {
        println("  [forgot #$number: \"$text\"]")
        return true
    }

    override fun onFailed(what: String, error: String): Boolean {
        println("  [could not learn or forget \"$what\": $error]")
        return true
    }
}

/** Shows the reply as it is written. */
private object Printer : TokenListener {
    override fun onToken(piece: String): Boolean {
        print(piece)
        System.out.flush()
        return true
    }
}

fun main(args: Array<String>) {
    if (args.size != 2) {
        System.err.println("usage: chat MODEL STORE")
        exitProcess(2)
    }
    val scripted = System.console() == null
    try {
        Engram.open(args[0], args[1]).use { engram ->
            Chat(engram, true, Told).use { chat ->
                // Asked about yourself something you never told, it says so instead of inventing.
                chat.setAbstention("You haven't told me that.")
                while (true) {
                    val turn = readLine()?.trim() ?: break
                    when {
                        turn.isEmpty() -> continue
                        turn == "/quit" -> break
                        turn == "/reset" -> {
                            chat.reset()
                            println("(new conversation)")
                        }
                        turn.startsWith("/remember ") -> chat.remember(turn.removePrefix("/remember "))
                        turn.startsWith("/forget ") -> chat.forget(turn.removePrefix("/forget "))
                        else -> {
                            println("> $turn")
                            chat.say(turn, 64u, Printer)
                            println()
                        }
                    }
                    if (scripted) chat.waitIdle()
                }
                // What is still queued is learned before the store is closed.
                chat.waitIdle()
            }
        }
    } catch (e: EngramException) {
        System.err.println("chat: ${e::class.simpleName}: ${e.message}")
        exitProcess(1)
    }
}
