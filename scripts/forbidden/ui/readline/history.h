/* Stand-in found first on the include path of kernels/, engine/ and lua/:
 * these layers may not use the terminal (DESIGN.md, "Folders and their rules"). */
#error "layering: <readline/history.h> is for tui/ only"
