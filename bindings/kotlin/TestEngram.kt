// The Kotlin binding on the real default model: learn a fact, ask, export a delta, import it
// into a second store, errors as exceptions, and 4 threads generating while learning runs.
// Usage: TestEngramKt MODEL STORE_A STORE_B DELTA_PATH (run by ffi/uniffi/tests/bindings.rs).

import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.system.exitProcess
import uniffi.engram.Chat
import uniffi.engram.Engram
import uniffi.engram.EngramException
import uniffi.engram.LearnListener
import uniffi.engram.MemoryListener
import uniffi.engram.TokenListener
import uniffi.engram.encryptStore
import uniffi.engram.generateSigningKey
import uniffi.engram.isStatement
import uniffi.engram.signDelta
import uniffi.engram.verifyDelta
import uniffi.engram.version

var passed = 0
var failed = 0

fun check(ok: Boolean, what: String) {
    if (ok) passed++ else failed++
    println("${if (ok) "ok  " else "FAIL"} $what")
}

inline fun <reified E : Throwable> throws(what: String, body: () -> Unit) {
    try {
        body()
        check(false, "$what (nothing thrown)")
    } catch (e: Throwable) {
        check(e is E, "$what: ${e::class.simpleName}: ${e.message}")
    }
}

fun main(args: Array<String>) {
    val (model, storeA, storeB, deltaPath) = args
    val question = "What is the name of my neighbour's parrot?"
    val answer = "Captain Biscuit"
    check(version().count { it == '.' } == 2, "version ${version()}")

    throws<EngramException.Io>("a missing model") { Engram.open("/nonexistent/model.gguf") }
    throws<EngramException.BadFile>("a model that is not GGUF") { Engram.open(storeA, null) }

    Engram.open(model, storeA, true, 2u).use { a ->
        throws<EngramException.InUse>("a second writer of the same store") { Engram.open(model, storeA) }
        val before = a.ask(question)
        val steps = mutableListOf<Double>()
        val report = a.learnQa(question, answer, 0u, object : LearnListener {
            override fun onStep(fact: UInt, step: UInt, loss: Double): Boolean {
                steps.add(loss)
                return true
            }
        })
        val fact = report.facts.single()
        check(fact.lossAfter < fact.lossBefore / 2 && steps.size >= 2,
            "learn a fact: loss ${"%.3f".format(fact.lossBefore)} -> ${"%.3f".format(fact.lossAfter)} over ${steps.size} steps")
        val after = a.ask(question)
        println("     before: $before | after: $after")
        check(!before.contains(answer) && after.contains(answer), "the answer is learned")

        val pieces = StringBuilder()
        var count = 0
        val text = a.generate("The capital of France is", 12u, object : TokenListener {
            override fun onToken(piece: String): Boolean {
                pieces.append(piece)
                return ++count < 4
            }
        })
        check(count == 4 && pieces.toString() == text, "streaming: 4 pieces, then stopped")

        val exported = a.exportDelta(deltaPath, null, false, "kotlin test")
        check(exported.rows > 0u && exported.facts.any { it.contains(answer) }, "export a delta (${exported.rows} rows)")
        throws<EngramException.InvalidArgument>("export since an unknown snapshot") {
            a.exportDelta(deltaPath + ".x", "no-such-snapshot", false, "")
        }
        throws<EngramException.InvalidArgument>("an empty note") { a.learnNote("", 1u, null) }

        // 4 threads generate while a note is learned on the same engine: each sees the memory
        // before or after the learning, and all finish.
        val prompt = "My sister Ana lives in"
        val old = a.generate(prompt, 6u, null)
        val texts = java.util.Collections.synchronizedList(mutableListOf<String>())
        val started = CountDownLatch(1)
        val threads = (0 until 4).map {
            Thread {
                repeat(3) {
                    texts.add(a.generate(prompt, 6u, null))
                    started.countDown()
                }
            }.apply { start() }
        }
        started.await(600, TimeUnit.SECONDS)
        a.learnNote("My sister Ana lives in Porto.", 4u, null)
        threads.forEach { it.join(600_000) }
        val new = a.generate(prompt, 6u, null)
        check(texts.size == 12, "4 threads x 3 generations finished (${texts.size})")
        check(old != new && texts.all { it == old || it == new },
            "every generation saw the memory before or after learning (${texts.count { it == new }} after)")

        // Learning while chatting: a statement, a changed one replacing it, forgetting it.
        check(isStatement("My cat is called Miso.") && !isStatement("What is my cat called?"),
            "statements told from questions")
        check(a.remember("My cat is called Miso.").replaced == null, "remember a statement")
        check(a.remember("My cat is called Tofu.").replaced == "My cat is called Miso.",
            "a changed statement replaces the earlier one")
        check(a.forget("tofu").text == "My cat is called Tofu." &&
            a.learnedFacts().none { it.text.contains("cat") }, "forget it by a word of it")
        throws<EngramException.InvalidArgument>("a fact is forgotten once") { a.forget("tofu") }

        // A chat that learns in the background and says so through a listener.
        val heard = java.util.Collections.synchronizedList(mutableListOf<String>())
        val chat = Chat(a, true, object : MemoryListener {
            override fun onRemembered(text: String, number: ULong, replaced: String?, seconds: Double) =
                heard.add("remembered $number $text")
            override fun onForgot(text: String, number: ULong) = heard.add("forgot $number $text")
            override fun onFailed(what: String, error: String) = heard.add("failed $what")
        })
        check(chat.say("My hamster is called Pistachio.", 24u, null).isNotEmpty(), "a statement gets a reply")
        chat.waitIdle()
        check(heard.size == 1 && heard[0].startsWith("remembered ") &&
            heard[0].endsWith("My hamster is called Pistachio."), "the listener hears it learned ($heard)")
        chat.setAbstention("You haven't told me that.")
        chat.reset()
        val hamster = chat.say("What is my hamster called?", 24u, null)
        check(hamster.contains("Pistachio"), "a new conversation recalls it ($hamster)")
        chat.reset()
        val cat = chat.say("What is my cat called?", 24u, null)
        check(cat == "You haven't told me that.", "a never-told question is declined ($cat)")
        chat.setAbstention(null)
        chat.forget("Pistachio")
        chat.waitIdle()
        check(heard.last().startsWith("forgot "), "the listener hears it forgotten ($heard)")
        chat.stopLearning()
        throws<EngramException.InvalidArgument>("a closed chat learns nothing") { chat.remember("I have a tortoise.") }

        Engram.open(model, storeB, true, 2u).use { b ->
            check(b.ask(question) == before, "B does not know the fact")
            val imported = b.importDelta(deltaPath)
            check(imported.id == exported.id && imported.rows == exported.rows, "import into B")
            check(b.ask(question) == after, "B answers like A")
            check(b.importDelta(deltaPath).alreadyImported, "a second import changes nothing")
            throws<EngramException.BadFile>("importing a model as a delta") { b.importDelta(model) }
            val reverted = b.revertDelta(exported.id)
            check(reverted.exact == exported.rows && b.ask(question) == before, "revert restores B")
            throws<EngramException.InvalidArgument>("revert twice") { b.revertDelta(exported.id) }

            // Signed deltas: once B requires Ana's key, only what she signed imports.
            val key = deltaPath + ".kt-ana.key"
            java.io.File(key).delete()
            java.io.File("$key.pub").delete()
            val public = generateSigningKey(key, "Ana's phone")
            check(public.length == 64, "generate a signing key")
            b.trustSigners("$key.pub")
            throws<EngramException.Untrusted>("an unsigned delta under the policy") { b.importDelta(deltaPath) }
            signDelta(deltaPath, key)
            check(verifyDelta(deltaPath, "$key.pub") == public, "verify: signed by the trusted key")
            check(b.importDelta(deltaPath).rows == exported.rows, "the signed delta imports")
            b.checkpoint()
        }
        // Encrypted at rest: a copy of B under a key the app holds.
        run {
            val sealed = deltaPath + ".kt-sealed.engram"
            listOf(sealed, "$sealed.journal", "$sealed.readkeys").forEach { java.io.File(it).delete() }
            java.io.File(storeB).copyTo(java.io.File(sealed))
            val storeKey = ByteArray(32) { it.toByte() }
            encryptStore(sealed, storeKey, false)
            throws<EngramException.BadFile>("an encrypted store without its key") { Engram.open(model, sealed, true, 2u, null) }
            Engram.open(model, sealed, true, 2u, storeKey).use { e ->
                check(e.importedDeltas().size == 1 && e.ask(question) == after, "opens with its key and answers as B")
            }
            encryptStore(sealed, storeKey, true)
            Engram.open(model, sealed, false, 2u, null).use { check(it.importedDeltas().size == 1, "decrypted again") }
        }
    }
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
