// A personal notebook on engram: teach it notes, ask about them, export what it learned.
//
//   java -Djna.library.path=DIR -cp notebook.jar:jna.jar engram.examples.NotebookKt \
//       MODEL STORE add "My sister Ana lives in Porto." ask "Where does my sister Ana live?" export notes.delta
//
// Commands run in order: add NOTE, ask QUESTION, export DELTA, import DELTA. Compile with the
// generated binding: kotlinc bindings/kotlin/uniffi/engram/engram.kt Notebook.kt -cp jna.jar
// -include-runtime -d notebook.jar

package engram.examples

import kotlin.system.exitProcess
import uniffi.engram.Engram
import uniffi.engram.EngramException
import uniffi.engram.LearnListener

fun main(args: Array<String>) {
    if (args.size < 2 || args.size % 2 != 0) {
        System.err.println("usage: notebook MODEL STORE (add NOTE | ask QUESTION | export DELTA | import DELTA)...")
        exitProcess(2)
    }
    val progress = object : LearnListener {
        override fun onStep(fact: UInt, step: UInt, loss: Double): Boolean {
            println("  step $step: loss ${"%.3f".format(loss)}")
            return true
        }
    }
    try {
        Engram.open(args[0], args[1]).use { notebook ->
            for ((command, arg) in args.drop(2).chunked(2).map { it[0] to it[1] }) {
                when (command) {
                    "add" -> {
                        println("learning: $arg")
                        notebook.learnNote(arg, 0u, progress)
                    }
                    "ask" -> println("Q: $arg\nA: ${notebook.ask(arg)}")
                    "export" -> {
                        val report = notebook.exportDelta(arg, null, false, "notebook")
                        println("exported ${report.facts.size} notes (${report.rows} rows) to $arg")
                    }
                    "import" -> println("imported ${notebook.importDelta(arg).rows} rows from $arg")
                    else -> {
                        System.err.println("unknown command $command")
                        exitProcess(2)
                    }
                }
            }
        }
    } catch (e: EngramException) {
        System.err.println("notebook: ${e::class.simpleName}: ${e.message}")
        exitProcess(1)
    }
}
