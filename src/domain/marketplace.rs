//! Every SP-API marketplace: its id, where it is, and which region's hosts serve it.
//! Used to tell marketplace ids from merchant tokens (they look alike) and to name
//! marketplaces for people. Source: Amazon's "Marketplace IDs" and "Seller Central URLs"
//! pages, and its "Vendor Central URLs" (see docs/amazon.md).

use super::{AccountType, Region};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marketplace {
    pub id: &'static str,
    /// ISO 3166 alpha-2, except that Amazon writes `UK` for the United Kingdom.
    pub country_code: &'static str,
    /// The store's name, as Amazon's marketplace participations give it.
    pub name: &'static str,
    pub region: Region,
    pub seller_central_url: &'static str,
    /// Where vendors of this marketplace sign in (several Middle East stores share one).
    pub vendor_central_url: &'static str,
}

macro_rules! marketplaces {
    ($($id:literal $country:literal $name:literal $region:ident $seller:literal $vendor:literal;)*) => {
        /// Every marketplace, by region, in Amazon's order.
        pub const MARKETPLACES: &[Marketplace] = &[$(Marketplace {
            id: $id,
            country_code: $country,
            name: $name,
            region: Region::$region,
            seller_central_url: $seller,
            vendor_central_url: $vendor,
        }),*];
    };
}

marketplaces! {
    "A2EUQ1WTGCTBG2" "CA" "Amazon.ca" Na "https://sellercentral.amazon.ca" "https://vendorcentral.amazon.ca";
    "ATVPDKIKX0DER" "US" "Amazon.com" Na "https://sellercentral.amazon.com" "https://vendorcentral.amazon.com";
    "A1AM78C64UM0Y8" "MX" "Amazon.com.mx" Na "https://sellercentral.amazon.com.mx" "https://vendorcentral.amazon.com.mx";
    "A2Q3Y263D00KWC" "BR" "Amazon.com.br" Na "https://sellercentral.amazon.com.br" "https://vendorcentral.amazon.com.br";
    "A28R8C7NBKEWEA" "IE" "Amazon.ie" Eu "https://sellercentral.amazon.ie" "https://vendorcentral.amazon.ie";
    "A1RKKUPIHCS9HS" "ES" "Amazon.es" Eu "https://sellercentral-europe.amazon.com" "https://vendorcentral.amazon.es";
    "A1F83G8C2ARO7P" "UK" "Amazon.co.uk" Eu "https://sellercentral-europe.amazon.com" "https://vendorcentral.amazon.co.uk";
    "A13V1IB3VIYZZH" "FR" "Amazon.fr" Eu "https://sellercentral-europe.amazon.com" "https://vendorcentral.amazon.fr";
    "AMEN7PMS3EDWL" "BE" "Amazon.com.be" Eu "https://sellercentral.amazon.com.be" "https://vendorcentral.amazon.com.be";
    "A1805IZSGTT6HS" "NL" "Amazon.nl" Eu "https://sellercentral.amazon.nl" "https://vendorcentral.amazon.nl";
    "A1PA6795UKMFR9" "DE" "Amazon.de" Eu "https://sellercentral-europe.amazon.com" "https://vendorcentral.amazon.de";
    "APJ6JRA9NG5V4" "IT" "Amazon.it" Eu "https://sellercentral-europe.amazon.com" "https://vendorcentral.amazon.it";
    "A2NODRKZP88ZB9" "SE" "Amazon.se" Eu "https://sellercentral.amazon.se" "https://vendorcentral.amazon.se";
    "AE08WJ6YKNBMC" "ZA" "Amazon.co.za" Eu "https://sellercentral.amazon.co.za" "https://vendorcentral.amazon.co.za";
    "A1C3SOZRARQ6R3" "PL" "Amazon.pl" Eu "https://sellercentral.amazon.pl" "https://vendorcentral.amazon.pl";
    "ARBP9OOSHTCHU" "EG" "Amazon.eg" Eu "https://sellercentral.amazon.eg" "https://vendorcentral.amazon.me";
    "A33AVAJ2PDY3EV" "TR" "Amazon.com.tr" Eu "https://sellercentral.amazon.com.tr" "https://vendorcentral.amazon.com.tr";
    "A17E79C6D8DWNP" "SA" "Amazon.sa" Eu "https://sellercentral.amazon.sa" "https://vendorcentral.amazon.me";
    "A2VIGQ35RCS4UG" "AE" "Amazon.ae" Eu "https://sellercentral.amazon.ae" "https://vendorcentral.amazon.me";
    "A21TJRUUN4KGV" "IN" "Amazon.in" Eu "https://sellercentral.amazon.in" "https://www.vendorcentral.in";
    "A19VAU5U5O7RUS" "SG" "Amazon.sg" Fe "https://sellercentral.amazon.sg" "https://vendorcentral.amazon.com.sg";
    "A39IBJ37TRP1C6" "AU" "Amazon.com.au" Fe "https://sellercentral.amazon.com.au" "https://vendorcentral.amazon.com.au";
    "A1VC38T7YXB528" "JP" "Amazon.co.jp" Fe "https://sellercentral.amazon.co.jp" "https://vendorcentral.amazon.co.jp";
}

impl Marketplace {
    pub fn find(id: &str) -> Option<&'static Marketplace> {
        MARKETPLACES.iter().find(|marketplace| marketplace.id == id)
    }

    /// The marketplace whose Seller or Vendor Central serves a region's accounts when
    /// nothing more precise is known: the US, Europe's shared Seller Central (by way of
    /// Germany), Japan.
    pub fn home_of(region: Region) -> &'static Marketplace {
        let id = match region {
            Region::Na => "ATVPDKIKX0DER",
            Region::Eu => "A1PA6795UKMFR9",
            Region::Fe => "A1VC38T7YXB528",
        };
        Self::find(id).expect("every region's home marketplace is in the table")
    }

    /// Where an account of this type signs in to consent to an application.
    pub fn central_url(&self, account_type: AccountType) -> &'static str {
        match account_type {
            AccountType::Seller => self.seller_central_url,
            AccountType::Vendor => self.vendor_central_url,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MerchantToken;

    #[test]
    fn the_table_is_complete_and_unambiguous() {
        let per_region = |region| MARKETPLACES.iter().filter(|m| m.region == region).count();
        assert_eq!(
            (
                per_region(Region::Na),
                per_region(Region::Eu),
                per_region(Region::Fe)
            ),
            (4, 16, 3)
        );
        for (i, marketplace) in MARKETPLACES.iter().enumerate() {
            assert_eq!(Marketplace::find(marketplace.id), Some(marketplace));
            assert!(
                MARKETPLACES[i + 1..]
                    .iter()
                    .all(|other| other.id != marketplace.id
                        && other.country_code != marketplace.country_code),
                "{} appears twice",
                marketplace.id
            );
            assert!(
                marketplace
                    .seller_central_url
                    .starts_with("https://sellercentral")
            );
            assert!(marketplace.vendor_central_url.starts_with("https://"));
            assert!(marketplace.vendor_central_url.contains("vendorcentral"));
        }
        assert_eq!(
            Marketplace::find("ATVPDKIKX0DER").unwrap().name,
            "Amazon.com"
        );
        assert_eq!(Marketplace::find("A1EXAMPLESELLER"), None);
        for region in [Region::Na, Region::Eu, Region::Fe] {
            assert_eq!(Marketplace::home_of(region).region, region);
        }
    }

    /// Every marketplace id has a merchant token's shape; the table is what tells them apart.
    #[test]
    fn no_marketplace_id_is_taken_for_a_merchant_token() {
        for marketplace in MARKETPLACES {
            let err = MerchantToken::parse(marketplace.id).unwrap_err();
            assert_eq!(
                err.0,
                format!(
                    "this is the marketplace id of {}, not a seller's merchant token",
                    marketplace.name
                )
            );
        }
    }
}
