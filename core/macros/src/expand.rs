//! The expansion of `#[derive(Model)]`: parse and check the struct, then
//! generate `impl ::fixnn::layers::Layer`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Error, Fields, Ident, LitStr, Result, Type, WherePredicate};

/// One field of the struct: a child layer.
struct Child<'a> {
    /// The field's identifier (`self.<ident>`).
    ident: &'a Ident,
    /// The field's type (a layer).
    ty: &'a Type,
    /// The path segment: the field name, or its `#[model(rename = "..")]`.
    name: LitStr,
}

/// Expand `#[derive(Model)]` on `input`.
///
/// # Errors
///
/// A [`syn::Error`] with a span on the offending item for enums, unions,
/// tuple and unit structs, structs without fields, struct-level `#[model]`
/// attributes, malformed or unknown field attributes, empty path segments
/// or segments containing `.`, and two fields with the same path segment.
pub(crate) fn expand(input: &DeriveInput) -> Result<TokenStream> {
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) if !named.named.is_empty() => &named.named,
            Fields::Named(named) => {
                return Err(Error::new(
                    named.brace_token.span.join(),
                    "#[derive(Model)] needs at least one field: a model is a sequence of one or more layers",
                ))
            }
            Fields::Unnamed(unnamed) => {
                return Err(Error::new(
                    unnamed.paren_token.span.join(),
                    "#[derive(Model)] does not support tuple structs: tensors are named after the fields (`fc1.weight`), so use named fields",
                ))
            }
            Fields::Unit => {
                return Err(Error::new(
                    input.ident.span(),
                    "#[derive(Model)] needs a struct with named fields, one layer per field; a unit struct has none",
                ))
            }
        },
        Data::Enum(e) => {
            return Err(Error::new(
                e.enum_token.span,
                "#[derive(Model)] does not support enums: use a struct with named fields, one layer per field",
            ))
        }
        Data::Union(u) => {
            return Err(Error::new(
                u.union_token.span,
                "#[derive(Model)] does not support unions: use a struct with named fields, one layer per field",
            ))
        }
    };

    let mut errors: Option<Error> = None;
    let mut push = |e: Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    for attr in &input.attrs {
        if attr.path().is_ident("model") {
            push(Error::new_spanned(
                attr,
                "#[model(..)] belongs on fields (`#[model(rename = \"name\")]`); the struct takes no options",
            ));
        }
    }

    let mut children: Vec<Child<'_>> = Vec::with_capacity(fields.len());
    for field in fields {
        // Named fields always have an identifier.
        let Some(ident) = field.ident.as_ref() else {
            continue;
        };
        let mut name = LitStr::new(&ident.unraw().to_string(), ident.span());
        let mut renamed = false;
        for attr in &field.attrs {
            if !attr.path().is_ident("model") {
                continue;
            }
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") {
                    let lit: LitStr = meta.value()?.parse()?;
                    if renamed {
                        return Err(meta.error("duplicate `rename` for this field"));
                    }
                    let s = lit.value();
                    if s.is_empty() {
                        return Err(Error::new(lit.span(), "a path segment cannot be empty"));
                    }
                    if s.contains('.') {
                        return Err(Error::new(
                            lit.span(),
                            "a path segment cannot contain `.`: dots separate the segments of a path",
                        ));
                    }
                    name = lit;
                    renamed = true;
                    Ok(())
                } else {
                    Err(meta.error("unknown model attribute; expected `rename = \"name\"`"))
                }
            });
            if let Err(e) = parsed {
                push(e);
            }
        }
        if let Some(first) = children.iter().find(|c| c.name.value() == name.value()) {
            push(Error::new(
                name.span(),
                format!(
                    "path segment `{}` is already used by field `{}`: tensor paths would be ambiguous",
                    name.value(),
                    first.ident
                ),
            ));
        }
        children.push(Child {
            ident,
            ty: &field.ty,
            name,
        });
    }
    if let Some(e) = errors {
        return Err(e);
    }
    Ok(generate(input, &children))
}

/// The `Layer` impl for a checked, non-empty list of children.
fn generate(input: &DeriveInput, children: &[Child<'_>]) -> TokenStream {
    let layer = quote!(::fixnn::layers::Layer);
    let ident = &input.ident;
    let type_name = LitStr::new(&ident.unraw().to_string(), ident.span());

    // Each field is a layer whose input is the previous field's output. The
    // bounds carry the field's span, so a mismatch points at the field.
    let mut generics = input.generics.clone();
    let where_clause = generics.make_where_clause();
    let mut prev: Option<&Type> = None;
    for c in children {
        let ty = c.ty;
        let pred: WherePredicate = match prev {
            None => syn::parse_quote_spanned!(ty.span()=> #ty: #layer),
            Some(p) => syn::parse_quote_spanned!(ty.span()=>
                #ty: #layer<In = <#p as #layer>::Out>
            ),
        };
        where_clause.predicates.push(pred);
        prev = Some(ty);
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();

    let n = children.len();
    let idents: Vec<&Ident> = children.iter().map(|c| c.ident).collect();
    let first_ty = children[0].ty;
    let last_ty = children[n - 1].ty;
    let first = idents[0];
    let last = idents[n - 1];

    // forward: each field on the previous field's output.
    let forward = idents.iter().enumerate().map(|(i, f)| {
        let x = match i {
            0 => quote!(x),
            _ => {
                let p = idents[i - 1];
                quote!(#layer::output(&self.#p))
            }
        };
        let call = quote!(#layer::forward(&mut self.#f, bk, ctx, #x));
        if i + 1 < n {
            quote!(#call?;)
        } else {
            call
        }
    });

    // backward: last to first; each field's dy is the next field's input
    // gradient buffer, which that field's backward just wrote. A field needs
    // its input gradient if the caller wants one or an earlier field has
    // parameters; a field without parameters whose input gradient nobody
    // needs is skipped.
    let tys: Vec<&Type> = children.iter().map(|c| c.ty).collect();
    let backward = (0..n).rev().map(|i| {
        let f = idents[i];
        let ty = tys[i];
        let x = match i {
            0 => quote!(x),
            _ => {
                let p = idents[i - 1];
                quote!(#layer::output(&self.#p))
            }
        };
        let dy = if i + 1 == n {
            quote!(dy)
        } else {
            let next = idents[i + 1];
            quote!(#layer::input_grad_mut(&mut self.#next))
        };
        let earlier = tys[..i].iter().map(|t| quote!(<#t as #layer>::HAS_PARAMS));
        let want = quote!(want_dx #(|| #earlier)*);
        quote! {
            let want = #want;
            if want || <#ty as #layer>::HAS_PARAMS {
                #layer::backward(&mut self.#f, bk, ctx, #x, #dy, want)?;
            }
        }
    });
    let has_params = tys.iter().map(|t| quote!(<#t as #layer>::HAS_PARAMS));

    let visit = children.iter().map(|c| {
        let (f, name) = (c.ident, &c.name);
        quote! {
            ::fixnn::model::Visitor::enter(&mut *v, #name);
            #layer::visit(&mut self.#f, &mut *v);
            ::fixnn::model::Visitor::leave(&mut *v);
        }
    });

    quote! {
        #[automatically_derived]
        impl #impl_generics #layer for #ident #ty_generics #where_clause {
            type In = <#first_ty as #layer>::In;
            type Out = <#last_ty as #layer>::Out;
            const TYPE: &'static str = #type_name;
            const HAS_PARAMS: bool = false #(|| #has_params)*;

            fn forward<FixnnBk: ::fixnn::backend::Backend>(
                &mut self,
                bk: &FixnnBk,
                ctx: &::fixnn::tensor::Ctx,
                x: &::fixnn::tensor::Tensor<<Self as #layer>::In>,
            ) -> ::fixnn::error::Result<()> {
                #(#forward)*
            }

            fn output(&self) -> &::fixnn::tensor::Tensor<<Self as #layer>::Out> {
                #layer::output(&self.#last)
            }

            fn backward<FixnnBk: ::fixnn::backend::Backend>(
                &mut self,
                bk: &FixnnBk,
                ctx: &::fixnn::tensor::Ctx,
                x: &::fixnn::tensor::Tensor<<Self as #layer>::In>,
                dy: &mut ::fixnn::tensor::Tensor<<Self as #layer>::Out>,
                want_dx: bool,
            ) -> ::fixnn::error::Result<()> {
                #(#backward)*
                Ok(())
            }

            fn input_grad(&self) -> &::fixnn::tensor::Tensor<<Self as #layer>::In> {
                #layer::input_grad(&self.#first)
            }

            fn input_grad_mut(&mut self) -> &mut ::fixnn::tensor::Tensor<<Self as #layer>::In> {
                #layer::input_grad_mut(&mut self.#first)
            }

            fn visit(&mut self, v: &mut dyn ::fixnn::model::Visitor) {
                #(#visit)*
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::expand;
    use syn::{parse_quote, DeriveInput};

    fn error_of(input: DeriveInput) -> String {
        match expand(&input) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(e) => e
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn rejects_what_is_not_a_struct_with_named_fields() {
        let cases: [(DeriveInput, &str); 5] = [
            (
                parse_quote!(
                    struct T(A, B);
                ),
                "tuple structs",
            ),
            (
                parse_quote!(
                    struct U;
                ),
                "unit struct",
            ),
            (
                parse_quote!(
                    struct E {}
                ),
                "at least one field",
            ),
            (
                parse_quote!(
                    enum N {
                        A(X),
                        B(Y),
                    }
                ),
                "enums",
            ),
            (parse_quote!(union W { a: X, b: Y }), "unions"),
        ];
        for (input, expected) in cases {
            let e = error_of(input);
            assert!(e.contains(expected), "{e:?} does not mention {expected:?}");
        }
    }

    #[test]
    fn rejects_bad_attributes() {
        let cases: [(DeriveInput, &str); 6] = [
            (
                parse_quote!(
                    struct S {
                        #[model(name = "x")]
                        a: A,
                    }
                ),
                "unknown model attribute",
            ),
            (
                parse_quote!(
                    struct S {
                        #[model(rename = "")]
                        a: A,
                    }
                ),
                "cannot be empty",
            ),
            (
                parse_quote!(
                    struct S {
                        #[model(rename = "a.b")]
                        a: A,
                    }
                ),
                "cannot contain `.`",
            ),
            (
                parse_quote!(
                    struct S {
                        #[model(rename = "x", rename = "y")]
                        a: A,
                    }
                ),
                "duplicate `rename`",
            ),
            (
                parse_quote!(
                    struct S {
                        a: A,
                        #[model(rename = "a")]
                        b: B,
                    }
                ),
                "already used by field `a`",
            ),
            (
                parse_quote!(
                    #[model(rename = "x")]
                    struct S {
                        a: A,
                    }
                ),
                "belongs on fields",
            ),
        ];
        for (input, expected) in cases {
            let e = error_of(input);
            assert!(e.contains(expected), "{e:?} does not mention {expected:?}");
        }
    }

    #[test]
    fn reports_every_error_at_once() {
        let e = error_of(parse_quote!(
            struct S {
                #[model(rename = "")]
                a: A,
                #[model(bogus)]
                b: B,
            }
        ));
        assert!(e.contains("cannot be empty") && e.contains("unknown model attribute"));
    }

    #[test]
    fn generates_names_bounds_and_order() {
        let input: DeriveInput = parse_quote! {
            struct Net<L: Layer> where L: Copy {
                fc1: Linear<4, 8, 2>,
                #[model(rename = "relu")]
                act: L,
                r#type: Linear<8, 3, 2>,
            }
        };
        let out = expand(&input).unwrap().to_string();
        for needle in [
            "const TYPE : & 'static str = \"Net\"",
            "\"fc1\"",
            "\"relu\"",
            "\"type\"",
            "L : Copy",
            "L : :: fixnn :: layers :: Layer < In = < Linear < 4 , 8 , 2 > as :: fixnn :: layers :: Layer > :: Out >",
            "type In = < Linear < 4 , 8 , 2 > as :: fixnn :: layers :: Layer > :: In",
            "type Out = < Linear < 8 , 3 , 2 > as :: fixnn :: layers :: Layer > :: Out",
        ] {
            assert!(out.contains(needle), "{needle:?} not in {out}");
        }
        // Backward runs last to first; only the first field gets the caller's want_dx.
        let b = out.find("fn backward").unwrap();
        let order: Vec<usize> = ["self . r#type", "self . act", "self . fc1"]
            .iter()
            .map(|f| b + out[b..].find(&format!("backward (& mut {f}")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
        assert_eq!(out.matches("let want = want_dx").count(), 3);
    }
}
